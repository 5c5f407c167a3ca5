"""Tag protocol, chat template, labels and truncation rules of the processor."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from longllava_sdk import Media
from longllava_sdk.errors import ProtocolError
from longllava_sdk.processing import IGNORE_INDEX, LongLLaVAProcessor, build_tokenizer
from longllava_sdk.processing import protocol
from longllava_sdk.highres import expand_to_square


def _img(colour=(255, 0, 0), size=(40, 30)):
    return Image.new("RGB", size, colour)


def test_single_and_multi_image_protocol(processor):
    text, images = processor.render_content("What is it?", [_img()])
    assert text == "<img><image></img>\nWhat is it?" and len(images) == 1
    text, images = processor.render_content("Compare.", [_img(), _img(), _img()])
    assert text == "<img><image></img><img><image></img><img><image></img>\nCompare." and len(images) == 3


def test_markers_place_media_inline(processor):
    text, _ = processor.render_content("First <image> then <image>?", [_img(), _img()])
    assert text == "First <img><image></img> then <img><image></img>?"


def test_video_protocol_has_no_stray_characters(processor):
    media = Media(kind="video", images=[_img()] * 3, metadata=[{"timestamp": t} for t in (0.0, 1.0, 2.0)])
    assert protocol.render_media(media) == (
        "<vid><img><image></img><t><img><image></img><t><img><image></img></vid>"
    )
    single = Media(kind="video", images=[_img()])
    assert protocol.render_media(single) == "<vid><img><image></img></vid>"


def test_high_res_protocol_global_then_rows(processor):
    media = Media(kind="tiled", images=[_img()] * 7, grid=(2, 3))
    assert protocol.render_media(media) == (
        "<img><image></img>\n"
        "<img><image></img><img><image></img><img><image></img>\n"
        "<img><image></img><img><image></img><img><image></img>"
    )


def test_tiled_with_dropped_tiles_renders_remaining_rows():
    metadata = [{}] + [{"row": 0, "col": 0}, {"row": 0, "col": 2}, {"row": 2, "col": 1}]
    media = Media(kind="tiled", images=[_img()] * 4, metadata=metadata, grid=(3, 3))
    assert protocol.render_media(media) == (
        "<img><image></img>\n<img><image></img><img><image></img>\n<img><image></img>"
    )


def test_volume_renders_ordered_slices():
    media = Media(kind="volume", images=[_img()] * 2, metadata=[{"slice_position": -5.0}, {"slice_position": 0.0}])
    assert protocol.render_media(media) == "<img><image></img><img><image></img>"


def test_chat_template_matches_released_model(processor):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|startoftext|><|User|>\nHi\n<|startoftext|><|Assistant|>\nHello\n"
        "<|startoftext|><|User|>\nAgain\n<|startoftext|><|Assistant|>\n"
    )


def test_labels_mask_user_turns_and_keep_answers(processor):
    messages = [
        {"from": "human", "value": "<image>\nIs it red?", "media": [_img()]},
        {"from": "gpt", "value": "yes"},
    ]
    sample = processor.encode_conversation(messages)
    assert len(sample.input_ids) == len(sample.labels)
    assert sample.input_ids.count(processor.image_token_id) == processor.tokens_per_image
    kept = [t for t, l in zip(sample.input_ids, sample.labels) if l != IGNORE_INDEX]
    assert processor.tokenizer.decode(kept) == "yes<|endoftext|>"
    assert all(l == IGNORE_INDEX for t, l in zip(sample.input_ids, sample.labels) if t == processor.image_token_id)


def test_each_image_expands_to_tokens_per_image(processor):
    ids = processor.tokenize("a<image>b<image>")
    assert ids.count(processor.image_token_id) == 2 * processor.tokens_per_image


def test_marker_media_count_mismatch_is_an_error_naming_both(processor):
    with pytest.raises(ProtocolError, match="2 <image> marker.*1 media item"):
        processor.render_content("<image> and <image>", [_img()])


def test_truncation_never_cuts_media(processor):
    messages = [{"role": "user", "content": "Look", "media": [_img(), _img()]},
                {"role": "assistant", "content": "ok"}]
    with pytest.raises(ProtocolError, match="would cut through media"):
        processor.encode_conversation(messages, max_length=200)
    assert processor.encode_conversation(messages, max_length=200, truncation="drop") is None
    assert len(processor.encode_conversation(messages, max_length=400)) > 288


def test_pad_to_square_uses_clip_mean_colour():
    mean = (122, 116, 104)
    square = expand_to_square(_img((255, 0, 0), (40, 20)), mean)
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == mean and square.getpixel((20, 20)) == (255, 0, 0)


def test_preprocess_images_shape_and_padding(processor):
    pixels = processor.preprocess_images([_img(size=(100, 50)), _img(size=(336, 336))])
    assert pixels.shape == (2, 3, 336, 336)
    # the padded band is the CLIP mean colour, which normalises to ~0
    assert pixels[0, :, :40, :].abs().max() < 0.02


def test_batch_call_left_pads_for_generation(processor):
    prompts = [processor.apply_chat_template([{"role": "user", "content": text, "media": media}],
                                             add_generation_prompt=True)
               for text, media in (("short", [_img()]), ("a much longer prompt than the other", []))]
    batch = processor(prompts, images=[[_img()], []])
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 1
    # the text-only prompt is shorter than the one with 144 image tokens: padded on the left
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    assert batch["attention_mask"][0].all()


def test_processor_save_load_round_trip(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    loaded = LongLLaVAProcessor.from_pretrained(tmp_path)
    assert loaded.tokens_per_image == processor.tokens_per_image
    assert loaded.image_token_id == processor.image_token_id
    text = "<|startoftext|><|User|>\nIs there a nodule?\n"
    assert loaded.tokenize(text) == processor.tokenize(text)
    assert torch.equal(loaded.preprocess_images([_img()]), processor.preprocess_images([_img()]))


def test_local_tokenizer_is_deterministic_and_has_jamba_ids():
    a, b = build_tokenizer(), build_tokenizer()
    assert (a.pad_token_id, a.bos_token_id, a.eos_token_id) == (0, 1, 2)
    text = "Which of the images contains the red square?"
    assert a(text).input_ids == b(text).input_ids
