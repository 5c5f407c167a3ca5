"""Long prompts: chunked prefill, lazy image streams, the context limit, the cache abstraction.

The chunked prefill must be invisible in the results: the logits of every position equal a
one-shot forward within 1e-4 and greedy generation is token-for-token the same, whatever the
chunk size (1 token, inside an image's placeholder run, exactly at its edges), with a batch of
left-padded rows of different image counts.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from longllava_sdk import LongLLaVAConfig
from longllava_sdk.context_limit import check_context, check_input_ids, max_images_for
from longllava_sdk.errors import ConfigError, ProtocolError
from longllava_sdk.modeling import cache_access
from longllava_sdk.modeling.mamba_mixer import LongLLaVAMambaMixer
from longllava_sdk.modeling.chunked_prefill import resolve_chunk_size
from longllava_sdk.modeling.image_stream import IndexedImages, StreamedImages

pytestmark = pytest.mark.compat

PREFIX = 8  # text tokens before the first image of the longest row


def _prompt(config, images_per_row: list[int], extra_text: list[int] | None = None):
    """Left-padded ``(B, L)`` ids and mask; row r: BOS + text + images (each + 1 separator) + 2 tokens."""
    t, image = config.tokens_per_image, config.image_token_id
    rows = []
    for r, n in enumerate(images_per_row):
        ids = [1, *range(5, 5 + PREFIX - 1 + (extra_text or [0] * len(images_per_row))[r])]
        for k in range(n):
            ids += [image] * t + [20 + k]
        rows.append(ids + [8, 9])
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.fixture(scope="module")
def batch(tiny_config):
    ids, mask = _prompt(tiny_config, [2, 1], extra_text=[0, 30])
    torch.manual_seed(0)
    return ids, mask, torch.randn(3, 3, 336, 336)


@pytest.fixture(scope="module")
def memory_model(tiny_model):
    """The tiny model with slowly decaying Mamba states.

    At random initialisation every SSM state forgets within a few tokens (``A = -1..-16``,
    ``dt ~ 0.7``), so a chunk that wrongly starts from zeros would barely change anything.
    Here ``A ~ -0.01`` and ``dt ~ 0.05``: the state carries information across thousands of
    tokens and any lost state shows in the logits.
    """
    import copy

    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    model = copy.deepcopy(tiny_model)
    for module in model.modules():
        if isinstance(module, JambaMambaMixer):
            with torch.no_grad():
                module.A_log.fill_(-4.6)
                module.dt_proj.bias.fill_(-3.0)
                module.out_proj.weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="module")
def one_shot_logits(memory_model, batch):
    ids, mask, pixels = batch
    with torch.no_grad():
        return memory_model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits


def test_the_models_mamba_layers_are_the_sdk_mixer(tiny_model):
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    mixers = [m for m in tiny_model.modules() if isinstance(m, JambaMambaMixer)]
    assert len(mixers) == tiny_model.config.text_config.layers_block_type.count("mamba")
    assert all(type(m) is LongLLaVAMambaMixer for m in mixers)


# 1: every token its own chunk; 37 / 100: boundaries inside image runs; PREFIX and
# PREFIX + 144: exactly at the first image's start and end; 10_000: one chunk.
@pytest.mark.parametrize("chunk", [37, 100, PREFIX, PREFIX + 144, 10_000])
def test_chunked_prefill_logits_equal_the_one_shot_forward(memory_model, batch, one_shot_logits, chunk):
    ids, mask, pixels = batch
    out = memory_model.prefill(ids, mask, pixels, chunk_size=chunk, return_all_logits=True)
    assert out.chunks == -(-ids.shape[1] // chunk)
    assert out.images_encoded == 3
    real = mask.bool()
    assert (out.logits - one_shot_logits)[real].abs().max() < 1e-4
    assert cache_access.cached_tokens(out.cache) == ids.shape[1]


def test_chunk_of_one_token(memory_model, tiny_config):
    ids, mask = _prompt(tiny_config, [1, 0], extra_text=[0, 5])
    pixels = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        ref = memory_model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    out = memory_model.prefill(ids, mask, pixels, chunk_size=1, return_all_logits=True)
    assert out.chunks == ids.shape[1]
    assert (out.logits - ref)[mask.bool()].abs().max() < 1e-4


def _ssm_states(cache, config):
    mamba = [i for i, kind in enumerate(config.text_config.layers_block_type) if kind == "mamba"]
    return torch.stack([cache_access.recurrent_state(cache, i) for i in mamba])


def test_chunked_ssm_states_equal_and_need_the_continuation(memory_model, tiny_config, batch, one_shot_logits,
                                                             monkeypatch):
    """What the SDK mixer's continuation path fixes: transformers' mixer restarts each chunk's scan from zero."""
    ids, mask, pixels = batch
    cache = cache_access.new_hybrid_cache(tiny_config.text_config)
    with torch.no_grad():
        memory_model(input_ids=ids, attention_mask=mask, pixel_values=pixels, cache=cache, use_cache=True)
    reference = _ssm_states(cache, tiny_config)
    chunked = _ssm_states(memory_model.prefill(ids, mask, pixels, chunk_size=100).cache, tiny_config)
    assert (chunked - reference).abs().max() < 1e-4
    sequence_forward = LongLLaVAMambaMixer.sequence_forward
    monkeypatch.setattr(LongLLaVAMambaMixer, "sequence_forward",  # drop the cached state, as transformers does
                        lambda self, hidden, cache, mask, initial_state: sequence_forward(self, hidden, cache, mask, None))
    forgetful = memory_model.prefill(ids, mask, pixels, chunk_size=100, return_all_logits=True)
    monkeypatch.undo()
    assert (_ssm_states(forgetful.cache, tiny_config) - reference).abs().max() > 0.1 * reference.abs().max()
    assert (forgetful.logits - one_shot_logits)[mask.bool()].abs().max() > 1e-2


@pytest.mark.parametrize("chunk", [37, PREFIX + 144])
def test_generate_with_chunked_prefill_equals_one_shot(memory_model, batch, chunk):
    ids, mask, pixels = batch
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8, min_new_tokens=8,
                  do_sample=False)
    with torch.no_grad():
        one_shot = memory_model.generate(**kwargs, prefill_chunk_size=0)
        chunked = memory_model.generate(**kwargs, prefill_chunk_size=chunk)
    assert chunked.shape == one_shot.shape == (2, ids.shape[1] + 8)
    assert torch.equal(chunked, one_shot)


def test_generate_chunks_long_prompts_by_default(tiny_model, batch, monkeypatch):
    ids, mask, pixels = batch
    calls = []
    original = type(tiny_model).prefill

    def spy(self, *args, **kwargs):
        calls.append(kwargs["chunk_size"])
        return original(self, *args, **kwargs)

    with torch.no_grad():
        reference = tiny_model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4,
                                        do_sample=False)
    monkeypatch.setattr(type(tiny_model), "prefill", spy)
    monkeypatch.setattr(tiny_model.config, "chunked_prefill_threshold", 64)
    monkeypatch.setattr(tiny_model.config, "chunked_prefill_size", 50)
    with torch.no_grad():
        out = tiny_model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=4,
                                  do_sample=False)
    assert calls == [50]
    assert torch.equal(out, reference)


def test_late_chunks_shrink_to_keep_the_attention_mask_bounded():
    from longllava_sdk.modeling.chunked_prefill import MASK_BUDGET, MIN_CHUNK, effective_chunk

    assert effective_chunk(2048, 0) == 2048
    assert effective_chunk(2048, 8192) == 2048  # the mask is still small there
    for cached in (16384, 32768, 144_000):
        chunk = effective_chunk(2048, cached)
        assert MIN_CHUNK <= chunk < 2048 and (chunk * (cached + chunk) <= MASK_BUDGET or chunk == MIN_CHUNK)
    assert effective_chunk(2048, 10**7) == MIN_CHUNK
    assert effective_chunk(2048, 10**7, mask_budget=None) == 2048


def test_resolve_chunk_size(tiny_config):
    assert resolve_chunk_size(tiny_config, 100) is None  # under the default threshold
    assert resolve_chunk_size(tiny_config, 100_000) == tiny_config.chunked_prefill_size
    assert resolve_chunk_size(tiny_config, 100, requested=30) == 30
    assert resolve_chunk_size(tiny_config, 100_000, requested=0) is None


# -- lazy images --------------------------------------------------------------------------------


def test_streamed_and_indexed_images_equal_the_tensor(memory_model, batch, one_shot_logits):
    ids, mask, pixels = batch
    taken: list[int] = []

    def load(index):
        taken.append(len(index))
        return pixels[index]

    def chunks():
        for k in range(0, 3, 2):  # chunks of 2 images, then 1
            yield pixels[k:k + 2]

    for images, count in ((IndexedImages(3, load), None), (chunks(), 3), (chunks(), None)):
        out = memory_model.prefill(ids, mask, images, chunk_size=60, image_count=count, return_all_logits=True)
        assert (out.logits - one_shot_logits)[mask.bool()].abs().max() < 1e-4
    # each image read once; a 60-column chunk starts at most one new image per row
    assert max(taken) <= 2 and sum(taken) == 3


def test_generate_accepts_a_stream(tiny_model, batch):
    ids, mask, pixels = batch
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        eager = tiny_model.generate(**kwargs, pixel_values=pixels)
        streamed = tiny_model.generate(**kwargs, pixel_values=iter([pixels[:1], pixels[1:]]), image_count=3,
                                       prefill_chunk_size=100)
        unchunked = tiny_model.generate(**kwargs, pixel_values=IndexedImages(3, lambda i: pixels[i]),
                                        prefill_chunk_size=0)
    assert torch.equal(eager, streamed)
    assert torch.equal(eager, unchunked)


def test_stream_with_the_wrong_number_of_images_is_refused(tiny_model, batch):
    ids, mask, pixels = batch
    with pytest.raises(ProtocolError, match="ended after 2 images"):
        tiny_model.prefill(ids, mask, iter([pixels[:2]]), chunk_size=100)
    with pytest.raises(ProtocolError, match="more images"):
        tiny_model.prefill(ids, mask, iter([pixels, pixels[:1]]), chunk_size=100)
    with pytest.raises(ProtocolError, match="0 images were given"):
        tiny_model.prefill(ids, mask, None, chunk_size=100)
    stream = StreamedImages(iter([pixels]))
    stream.take(torch.tensor([0]))
    with pytest.raises(ProtocolError, match="already consumed"):
        stream.take(torch.tensor([0]))


# -- context limit ------------------------------------------------------------------------------


def test_check_context_names_the_numbers(tiny_config):
    config = LongLLaVAConfig.from_preset("tiny", max_context=1000)
    assert check_context(config, text_tokens=100, images=6) == 964
    with pytest.raises(ProtocolError) as err:
        check_context(config, text_tokens=100, images=7, source="scan.mp4")
    message = str(err.value)
    for number in ("scan.mp4", "7 images x 144 tokens", "100 text tokens", "1108 tokens", "1000 tokens", "at most 6"):
        assert number in message
    assert max_images_for(config, 100) == 6


def test_too_long_input_is_refused_before_any_image_is_encoded(tiny_model, batch, monkeypatch):
    ids, mask, pixels = batch

    def no_vision(*args, **kwargs):
        raise AssertionError("the vision tower ran for an input that does not fit")

    monkeypatch.setattr(tiny_model, "get_image_features", no_vision)
    monkeypatch.setattr(tiny_model.config, "max_context", ids.shape[1] - 1)
    with pytest.raises(ProtocolError, match=f"more than the model's context of {ids.shape[1] - 1} tokens"):
        tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    for chunk in (0, 50):
        with pytest.raises(ProtocolError, match="2 images x 144 tokens"):
            tiny_model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=2,
                                prefill_chunk_size=chunk)
    with pytest.raises(ProtocolError):
        tiny_model.prefill(ids, mask, pixels, chunk_size=50)
    assert check_input_ids(tiny_model.config, ids[:, :-1]) == ids.shape[1] - 1


def test_tiny_preset_context_fits_1000_images_and_is_bounded_by_the_backbone(tiny_config):
    assert tiny_config.max_context == 262144
    assert tiny_config.max_context <= tiny_config.text_config.max_position_embeddings
    assert max_images_for(tiny_config, 2000) >= 1000
    with pytest.raises(ConfigError, match="max_context"):
        LongLLaVAConfig.from_preset("tiny", max_context=tiny_config.text_config.max_position_embeddings + 1)


# -- cache abstraction ----------------------------------------------------------------------------


def test_cache_access_matches_the_installed_transformers(tiny_model, tiny_config):
    """Fails when transformers moves the Mamba states again (update longllava_sdk/modeling/cache_access.py)."""
    from transformers import DynamicCache
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    assert cache_access.MIXER_CACHE_ARGUMENT in inspect.signature(JambaMambaMixer.forward).parameters
    getters = hasattr(DynamicCache, "get_conv_state") and hasattr(DynamicCache, "get_recurrent_state")
    assert cache_access._HAS_GETTERS == getters
    text = tiny_config.text_config
    mamba = [i for i, kind in enumerate(text.layers_block_type) if kind == "mamba"]
    attention = [i for i, kind in enumerate(text.layers_block_type) if kind == "attention"]
    cache = cache_access.new_hybrid_cache(text)
    assert not cache_access.has_previous_state(cache, mamba[0])
    assert cache_access.recurrent_state(cache, mamba[0]) is None
    if not getters:  # the pre-5.23 layout the SDK reads directly
        assert hasattr(cache.layers[mamba[0]], "conv_states") and hasattr(cache.layers[mamba[0]], "recurrent_states")

    ids = torch.randint(3, 500, (2, 9))
    with torch.no_grad():
        tiny_model(input_ids=ids, cache=cache, use_cache=True)
    d, n, k = text.mamba_expand * text.hidden_size, text.mamba_d_state, text.mamba_d_conv
    for i in mamba:
        assert cache_access.has_previous_state(cache, i)
        assert tuple(cache_access.conv_state(cache, i).shape) == (2, d, k)
        assert tuple(cache_access.recurrent_state(cache, i).shape) == (2, d, n)
    assert cache_access.cached_tokens(cache) == 9
    # the accessor returns the cache's own tensor: a decode step updates it in place
    state = cache_access.recurrent_state(cache, mamba[0])
    before = state.clone()
    with torch.no_grad():
        tiny_model(input_ids=ids[:, :1], cache=cache, use_cache=True)
    assert cache_access.recurrent_state(cache, mamba[0]) is state and not torch.equal(state, before)

    sizes = cache_access.cache_bytes(cache)
    head_dim = text.hidden_size // text.num_attention_heads
    assert sizes.kv == len(attention) * 2 * (2 * text.num_key_value_heads * 10 * head_dim) * 4
    assert sizes.conv == len(mamba) * 2 * d * k * 4 and sizes.ssm == len(mamba) * 2 * d * n * 4
    assert sizes.total == sizes.kv + sizes.conv + sizes.ssm
