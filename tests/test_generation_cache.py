"""Generation with images on every transformers version the package allows.

transformers 5.24 renamed the generation cache argument (``past_key_values`` -> ``cache``);
the SDK used to decide whether a step gets the images by looking up the old name, and every
generation with images broke on a fresh install. These tests pin the behaviour that must hold
whatever the argument is called.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from transformers import JambaForCausalLM

from longllava_sdk.errors import ProtocolError
from longllava_sdk.modeling.modeling_longllava import JAMBA_CACHE_ARGUMENT, images_in_step

pytestmark = pytest.mark.compat


def _ids(config, images_per_row: list[int], text=(5, 6, 7)) -> torch.Tensor:
    rows = []
    for n in images_per_row:
        ids = [1, *text]
        for _ in range(n):
            ids += [config.image_token_id] * config.tokens_per_image + [10]
        rows.append(ids + [8, 9])
    width = max(map(len, rows))
    return torch.tensor([[0] * (width - len(r)) + r for r in rows])


def test_cache_argument_is_the_one_the_installed_transformers_declares():
    parameters = inspect.signature(JambaForCausalLM.forward).parameters
    assert JAMBA_CACHE_ARGUMENT in parameters
    # transformers accepts the other name only as a deprecated alias, if at all
    assert JAMBA_CACHE_ARGUMENT == ("cache" if "cache" in parameters else "past_key_values")


def test_forward_with_cache_emits_no_deprecation_warning(tiny_model, tiny_config):
    ids = _ids(tiny_config, [1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out = tiny_model(input_ids=ids, pixel_values=torch.randn(1, 3, 336, 336), use_cache=True)
            step = torch.tensor([[11]])
            tiny_model(input_ids=step, **{"cache": out.past_key_values})
            tiny_model(input_ids=step, past_key_values=out.past_key_values)  # the older name still works


@pytest.mark.parametrize("images", [[1], [2], [0]])
def test_greedy_generation_with_and_without_cache_agree(tiny_model, tiny_config, images):
    ids = _ids(tiny_config, images)
    pixels = torch.randn(sum(images), 3, 336, 336) if sum(images) else None
    kwargs = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            cached = tiny_model.generate(**kwargs, use_cache=True)
            uncached = tiny_model.generate(**kwargs, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 10
    assert torch.equal(cached, uncached)


def test_batched_generation_with_different_image_counts(tiny_model, tiny_config):
    ids = _ids(tiny_config, [2, 1])
    attention = (ids != 0).long()
    pixels = torch.randn(3, 3, 336, 336)
    with torch.no_grad():
        both = tiny_model.generate(input_ids=ids, attention_mask=attention, pixel_values=pixels, max_new_tokens=6,
                                   min_new_tokens=6, do_sample=False)
        first = tiny_model.generate(input_ids=ids[:1], attention_mask=attention[:1], pixel_values=pixels[:2],
                                    max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(both[0], first[0])


def test_images_in_step_selects_the_images_of_each_window(tiny_config):
    t, image = tiny_config.tokens_per_image, tiny_config.image_token_id
    row = [1, 5] + [image] * t + [9] + [image] * t + [7]
    ids = torch.tensor([row, [0] * (t + 1) + [1, 5] + [image] * t + [6]])  # 2 images, then 1
    width = ids.shape[1]
    assert images_in_step(ids, width, t, image).tolist() == [0, 1, 2]  # the prefill
    assert images_in_step(ids, 1, t, image) is None  # a decode step
    # a prefill chunk: row 0's second image and row 1's only one (image 2 counting row-major)
    assert images_in_step(ids, t + 2, t, image).tolist() == [1, 2]
    with pytest.raises(ProtocolError, match="cuts through"):
        images_in_step(ids, 5, t, image)


def test_prepare_inputs_for_generation_follows_the_tokens_not_the_keyword(tiny_model, tiny_config):
    ids = _ids(tiny_config, [1])
    pixels = torch.randn(1, 3, 336, 336)
    prefill = tiny_model.prepare_inputs_for_generation(ids, pixel_values=pixels, is_first_iteration=True)
    assert prefill["pixel_values"] is pixels
    step = tiny_model.prepare_inputs_for_generation(ids, pixel_values=pixels, next_sequence_length=1)
    assert "pixel_values" not in step or step["pixel_values"] is None
