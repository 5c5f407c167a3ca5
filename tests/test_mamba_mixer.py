"""The SDK's Mamba mixer is its own: transformers stays as it was, the SDK's models run the SDK's paths.

``LongLLaVAMambaMixer`` (longllava_sdk/modeling/mamba_mixer.py) subclasses transformers'
``JambaMambaMixer`` and is swapped into the SDK's own model instances when they are built.
Nothing in ``transformers.models.jamba.modeling_jamba`` (module attributes, class attributes)
may change, and a stock ``JambaForCausalLM`` in the same process must compute bit for bit
what it computed before a LongLLaVA model existed.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from transformers import JambaForCausalLM
from transformers.models.jamba import modeling_jamba
from transformers.models.jamba.modeling_jamba import JambaMambaMixer

import longllava_sdk
from longllava_sdk import LongLLaVAConfig
from longllava_sdk.modeling import cache_access
from longllava_sdk.modeling.kernels import interface
from longllava_sdk.modeling.mamba_mixer import LongLLaVAMambaMixer, swap_mamba_mixers

SDK_DIR = str(Path(longllava_sdk.__file__).resolve().parent)


@pytest.fixture(scope="module")
def text_config():
    return LongLLaVAConfig.from_preset("tiny").text_config


def _stock(text_config, seed: int = 0) -> JambaForCausalLM:
    torch.manual_seed(seed)
    return JambaForCausalLM(text_config).eval()


def _jamba_classes() -> dict[str, type]:
    return {name: value for name, value in vars(modeling_jamba).items()
            if isinstance(value, type) and value.__module__ == modeling_jamba.__name__}


def _snapshot() -> tuple[dict, dict]:
    """transformers' Jamba module namespace and every class namespace it defines (object identities)."""
    return dict(vars(modeling_jamba)), {name: dict(vars(cls)) for name, cls in _jamba_classes().items()}


def _from_the_sdk(value) -> bool:
    """Whether ``value`` is (or wraps) code written in longllava_sdk."""
    module = getattr(value, "__module__", None)
    code = getattr(value, "__code__", None) or getattr(getattr(value, "fget", None), "__code__", None)
    return (isinstance(module, str) and module.startswith("longllava_sdk")) or (
        code is not None and str(Path(code.co_filename).resolve()).startswith(SDK_DIR))


def _numba_scan_calls(monkeypatch) -> list:
    """Record the calls that reach the SDK's numba scan (the CPU default of the kernel interface)."""
    calls = []
    real = interface.scan_numba.selective_scan_numba
    monkeypatch.setattr(interface.scan_numba, "selective_scan_numba",
                        lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    return calls


def test_a_longllava_model_leaves_transformers_and_stock_jamba_untouched(text_config, monkeypatch):
    from longllava_sdk.model_folders import create_model

    stock = _stock(text_config)
    ids = torch.randint(3, text_config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = stock(ids).logits
    # after transformers' own first build (it caches a value on its model classes then)
    module_before, classes_before = _snapshot()

    sdk, _ = create_model("tiny", seed=1)
    calls = _numba_scan_calls(monkeypatch)
    with torch.no_grad():
        sdk(input_ids=ids)  # running an SDK model must not change anything either
        n_sdk = len(calls)
        after = stock(ids).logits

    module_after, classes_after = _snapshot()
    assert module_after == module_before
    assert classes_after == classes_before
    # Not only unchanged by this build: nothing of the SDK's is in there at all (an earlier test
    # of the session may have built a model before the snapshot).
    for owner in (modeling_jamba, *_jamba_classes().values()):
        leaked = [name for name, value in vars(owner).items() if _from_the_sdk(value)]
        assert not leaked, (owner, leaked)
    assert torch.equal(after, before)

    layers = text_config.layers_block_type.count("mamba")
    mixers = [m for m in sdk.modules() if isinstance(m, JambaMambaMixer)]
    assert len(mixers) == layers and all(type(m) is LongLLaVAMambaMixer for m in mixers)
    assert not any(isinstance(m, LongLLaVAMambaMixer) for m in stock.modules())
    # the SDK's prefill ran the SDK's scan in every Mamba layer; the stock model never reached it
    assert n_sdk == layers and len(calls) == n_sdk


def test_the_sdk_mixer_keeps_transformers_names_and_parameters(text_config):
    stock = _stock(text_config)
    names = dict(stock.named_parameters())
    ids = torch.randint(3, text_config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = stock(ids).logits
    layers = text_config.layers_block_type.count("mamba")
    assert swap_mamba_mixers(stock) == layers
    assert swap_mamba_mixers(stock) == 0  # already swapped
    # same parameter objects under the same names: checkpoints, convert_official and LoRA targets hold
    assert {n: id(p) for n, p in stock.named_parameters()} == {n: id(p) for n, p in names.items()}
    for mixer in (m for m in stock.modules() if isinstance(m, LongLLaVAMambaMixer)):
        assert all(isinstance(getattr(mixer, name), torch.nn.Linear) for name in ("in_proj", "x_proj", "out_proj"))
    with torch.no_grad():
        ours = stock(ids).logits
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    # and back: transformers' own mixers, transformers' own numbers
    assert swap_mamba_mixers(stock, JambaMambaMixer) == layers
    assert all(type(m) is JambaMambaMixer for m in stock.modules() if isinstance(m, JambaMambaMixer))
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, reference)


def _mixer_and_cache(text_config):
    layer = text_config.layers_block_type.index("mamba")
    torch.manual_seed(3)
    mixer = LongLLaVAMambaMixer(text_config, layer_idx=layer).eval()
    with torch.no_grad():  # slowly decaying states, so a lost state shows
        mixer.A_log.fill_(-4.6)
        mixer.dt_proj.bias.fill_(-3.0)
    return mixer, layer


def test_forward_takes_prefill_continuation_and_decode_paths(text_config, monkeypatch):
    mixer, layer = _mixer_and_cache(text_config)
    paths = []
    sequence_forward, decode_step = LongLLaVAMambaMixer.sequence_forward, LongLLaVAMambaMixer.decode_step

    def recording_sequence(self, hidden, cache, mask, initial_state):
        paths.append("continuation" if initial_state is not None else "prefill")
        return sequence_forward(self, hidden, cache, mask, initial_state)

    monkeypatch.setattr(LongLLaVAMambaMixer, "sequence_forward", recording_sequence)
    monkeypatch.setattr(LongLLaVAMambaMixer, "decode_step",
                        lambda self, hidden, cache: paths.append("decode") or decode_step(self, hidden, cache))
    hidden = torch.randn(2, 12, text_config.hidden_size)
    cache = cache_access.new_hybrid_cache(text_config)
    with torch.no_grad():
        one_shot = mixer(hidden)
        pieces = [mixer(hidden[:, :6], cache=cache), mixer(hidden[:, 6:10], cache=cache),
                  mixer(hidden[:, 10:11], cache=cache)]
        mixer.fast_decode = False
        pieces.append(mixer(hidden[:, 11:], cache=cache))
    assert paths == ["prefill", "prefill", "continuation", "decode", "continuation"]
    torch.testing.assert_close(torch.cat(pieces, dim=1), one_shot, rtol=1e-4, atol=1e-5)


def test_sdk_paths_equal_transformers_forward_and_cache_layout(text_config):
    """The sequence path against transformers' own forward (same instance), cache states included."""
    mixer, layer = _mixer_and_cache(text_config)
    hidden = torch.randn(2, 9, text_config.hidden_size)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    ours_cache, theirs_cache = (cache_access.new_hybrid_cache(text_config) for _ in range(2))
    with torch.no_grad():
        ours = mixer(hidden, cache=ours_cache, attention_mask=mask)
        theirs = JambaMambaMixer.forward(mixer, hidden, attention_mask=mask,
                                         **{cache_access.MIXER_CACHE_ARGUMENT: theirs_cache})
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cache_access.conv_state(ours_cache, layer), cache_access.conv_state(theirs_cache, layer))
    torch.testing.assert_close(cache_access.recurrent_state(ours_cache, layer),
                               cache_access.recurrent_state(theirs_cache, layer), rtol=1e-4, atol=1e-5)
    assert ours_cache.get_seq_length(layer) == theirs_cache.get_seq_length(layer)


def test_a_cache_recording_its_past_runs_transformers_forward(text_config, monkeypatch):
    """Assisted decoding's recording cache (per-token history for a crop) takes transformers' own path."""
    mixer, layer = _mixer_and_cache(text_config)
    ours_cache, theirs_cache = (cache_access.new_hybrid_cache(text_config) for _ in range(2))
    if not hasattr(ours_cache, "activate_past_recording"):
        pytest.skip("this transformers' cache cannot record its past")
    keeps = "kwargs" in inspect.signature(ours_cache.activate_past_recording).parameters  # 5.25: states to keep
    for cache in (ours_cache, theirs_cache):
        cache.activate_past_recording(**({"recurrent_states_to_keep": 1} if keeps else {}))
    monkeypatch.setattr(LongLLaVAMambaMixer, "sequence_forward", None)  # must not be reached
    monkeypatch.setattr(LongLLaVAMambaMixer, "decode_step", None)
    hidden = torch.randn(1, 5, text_config.hidden_size)
    with torch.no_grad():
        for piece in (hidden[:, :4], hidden[:, 4:]):
            ours = mixer(piece, cache=ours_cache)
            theirs = JambaMambaMixer.forward(mixer, piece, **{cache_access.MIXER_CACHE_ARGUMENT: theirs_cache})
            assert torch.equal(ours, theirs)
