"""Pipeline: load from a directory, generate, stream, multi-turn chat with per-turn images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from longllava_sdk import Pipeline
from longllava_sdk.errors import UnsafeCheckpointError

pytestmark = pytest.mark.compat  # also run on the oldest allowed dependency versions (.ci/run)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint, device="cpu")


def test_generate_returns_text_and_is_deterministic(pipe, rgb_images):
    first = pipe("What colour is the square?", images=rgb_images[:1], max_new_tokens=6)
    second = pipe("What colour is the square?", images=rgb_images[:1], max_new_tokens=6)
    assert isinstance(first, str) and first == second


def test_image_paths_and_pil_images_give_the_same_answer(pipe, rgb_images, tmp_path):
    path = tmp_path / "red.png"
    rgb_images[0].save(path)
    assert pipe("Describe.", images=[str(path)], max_new_tokens=5) == pipe("Describe.", images=rgb_images[:1],
                                                                          max_new_tokens=5)


def test_stream_yields_the_same_text(pipe, rgb_images):
    whole = pipe("Describe.", images=rgb_images[:2], max_new_tokens=8)
    pieces = list(pipe("Describe.", images=rgb_images[:2], max_new_tokens=8, stream=True))
    assert "".join(pieces).strip() == whole


def test_chat_history_keeps_each_turns_images(pipe, rgb_images, monkeypatch):
    seen = []
    original = pipe.processor.preprocess_images

    def spy(images):
        seen.append([img.getpixel((40, 40)) for img in images])
        return original(images)

    monkeypatch.setattr(pipe.processor, "preprocess_images", spy)
    pipe.reset()
    pipe.chat("What is this?", images=[rgb_images[0]], max_new_tokens=3)
    pipe.chat("Now this one?", images=[rgb_images[2]], max_new_tokens=3)
    pipe.chat("Which was first?", max_new_tokens=3)
    # turn 1 saw red; turn 2 saw red (history) then blue; turn 3 still both, no stale re-attachment
    assert seen == [[(255, 0, 0)], [(255, 0, 0), (0, 0, 255)], [(255, 0, 0), (0, 0, 255)]]
    prompt = pipe.processor.apply_chat_template(pipe.history, add_generation_prompt=False)
    assert prompt.count("<|User|>") == 3 and prompt.count("<img><image></img>") == 2
    # each image sits in its own turn: image 1, turn-1 text, image 2, turn-2 text
    assert (prompt.index("<img><image></img>") < prompt.index("What is this?")
            < prompt.rindex("<img><image></img>") < prompt.index("Now this one?"))
    pipe.reset()
    assert pipe.history == []


def test_pipeline_refuses_pickle_checkpoints(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        Pipeline.from_pretrained(tmp_path)


def test_generation_options_are_honoured(pipe, rgb_images):
    out = pipe("Describe.", images=rgb_images[:1], max_new_tokens=3, min_new_tokens=3)
    ids = pipe.processor.tokenizer(out, add_special_tokens=False).input_ids
    assert 1 <= len(ids) <= 4


def test_pixels_are_read_lazily_and_match_the_eager_tensor(pipe, rgb_images):
    from longllava_sdk.modeling.image_stream import IndexedImages

    messages = [{"role": "user", "content": "Describe.", "media": pipe.collect_media(rgb_images)}]
    lazy = pipe.inputs(messages)
    assert isinstance(lazy["pixel_values"], IndexedImages) and lazy["pixel_values"].count == 3
    eager = pipe._inputs(messages, lazy_pixels=False)
    assert torch.equal(lazy["input_ids"], eager["input_ids"])
    torch.testing.assert_close(lazy["pixel_values"].take(torch.arange(3)), eager["pixel_values"])
    with torch.inference_mode():
        out_lazy = pipe.model.generate(**lazy, max_new_tokens=4, do_sample=False)
        out_eager = pipe.model.generate(**eager, max_new_tokens=4, do_sample=False)
    assert torch.equal(out_lazy, out_eager)


def test_too_many_images_are_refused_with_the_numbers_before_any_is_read(pipe, rgb_images, monkeypatch):
    from longllava_sdk.errors import ProtocolError

    per_image = pipe.config.tokens_per_image
    monkeypatch.setattr(pipe.config, "max_context", 4 * per_image + 40)
    read = []
    monkeypatch.setattr(pipe.processor, "preprocess_images", lambda images: read.append(len(images)))
    with pytest.raises(ProtocolError, match=r"needs 6 images x .* at most 4 images fit"):
        pipe("Describe.", images=rgb_images * 2, max_new_tokens=2)
    with pytest.raises(ProtocolError, match=r"more than the model's context"):
        pipe("Describe. " * 40, images=rgb_images + rgb_images[:1], max_new_tokens=2)
    assert read == []


def test_image_files_are_decoded_only_when_their_pixels_are_read(pipe, rgb_images, tmp_path, monkeypatch):
    from longllava_plugins.images import ImagesAdapter
    from longllava_sdk.media import DeferredImage

    paths = []
    for i in range(40):
        path = tmp_path / f"frame_{i:02d}.png"
        rgb_images[i % 3].save(path)
        paths.append(str(path))
    decoded: list[str] = []
    original = ImagesAdapter.read_image

    def counting(self, path, **kwargs):
        decoded.append(str(path))
        return original(self, path, **kwargs)

    monkeypatch.setattr(ImagesAdapter, "read_image", counting)
    media = pipe.collect_media(paths)
    assert decoded == [] and all(isinstance(m.images[0], DeferredImage) for m in media)
    batches: list[int] = []
    preprocess = pipe.processor.preprocess_images
    monkeypatch.setattr(pipe.processor, "preprocess_images", lambda images: batches.append(len(images))
                        or preprocess(images))
    # a prompt long enough to be prefilled in chunks (40 x 144 tokens in chunks of 1024)
    answer = pipe("Which frame differs?", images=paths, max_new_tokens=3, prefill_chunk_size=1024)
    assert sorted(decoded) == sorted(paths)  # each file decoded once, when its chunk came
    assert len(batches) > 1 and max(batches) < len(paths)
    monkeypatch.setattr(ImagesAdapter, "read_image", original)
    assert answer == pipe("Which frame differs?", images=[rgb_images[i % 3] for i in range(40)], max_new_tokens=3,
                          prefill_chunk_size=1024)
