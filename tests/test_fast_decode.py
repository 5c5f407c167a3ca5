"""The SDK's fast Mamba decode step computes what transformers' mixer computes.

The step reads the mixer's weights and the cache's states itself
(``LongLLaVAMambaMixer.decode_step`` in longllava_sdk/modeling/mamba_mixer.py); if transformers
changes the mixer's arithmetic or weight layout, the comparison with its own forward below
fails on that version.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

from longllava_sdk.modeling import cache_access
from longllava_sdk.modeling.mamba_mixer import LongLLaVAMambaMixer, fast_decode_enabled, set_fast_decode

pytestmark = pytest.mark.compat


@pytest.fixture(scope="module")
def model(tiny_model):
    """A copy of the tiny model with long-memory Mamba states (see test_long_context.memory_model)."""
    model = copy.deepcopy(tiny_model)
    for module in model.modules():
        if isinstance(module, JambaMambaMixer):
            with torch.no_grad():
                module.A_log.fill_(-4.6)
                module.dt_proj.bias.fill_(-3.0)
    return model.eval()


def test_models_decode_fast_by_default(tiny_model):
    assert fast_decode_enabled(tiny_model)


def test_mixer_step_equals_transformers_mixer(model, tiny_config):
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 30))
    prefilled = model.prefill(ids, chunk_size=30).cache
    hidden = torch.randn(2, 1, tiny_config.text_config.hidden_size)
    mamba = [i for i, kind in enumerate(tiny_config.text_config.layers_block_type) if kind == "mamba"]
    mixers = {m.layer_idx: m for m in model.modules() if isinstance(m, JambaMambaMixer)}
    for layer in mamba:
        ours_cache, theirs_cache = copy.deepcopy(prefilled), copy.deepcopy(prefilled)
        mixer = mixers[layer]
        with torch.no_grad():
            # transformers' own forward on the same parameters (the base class's method)
            theirs = JambaMambaMixer.forward(mixer, hidden, **{cache_access.MIXER_CACHE_ARGUMENT: theirs_cache})
            ours = mixer.decode_step(hidden, ours_cache)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cache_access.recurrent_state(ours_cache, layer),
                                   cache_access.recurrent_state(theirs_cache, layer), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cache_access.conv_state(ours_cache, layer),
                                   cache_access.conv_state(theirs_cache, layer))


def test_greedy_generation_is_the_same_with_and_without_the_fast_step(model, tiny_config, monkeypatch):
    t, image = tiny_config.tokens_per_image, tiny_config.image_token_id
    rows = [[1, 5, 6, *[image] * t, 7, 8], [1, 5, 6, 7, 8, 9, 10, 11]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    pixels = torch.randn(1, 3, 336, 336)
    steps = []
    original = LongLLaVAMambaMixer.decode_step
    monkeypatch.setattr(LongLLaVAMambaMixer, "decode_step", lambda *a: steps.append(1) or original(*a))
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12, min_new_tokens=12,
                  do_sample=False)
    with torch.no_grad():
        fast = model.generate(**kwargs)
        set_fast_decode(model, False)
        try:
            reference = model.generate(**kwargs)
        finally:
            set_fast_decode(model, True)
    layers = tiny_config.text_config.layers_block_type.count("mamba")
    assert len(steps) == 11 * layers  # every step after the prefill, none during it
    assert torch.equal(fast, reference)
