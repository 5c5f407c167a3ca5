"""A released LongLLaVA checkpoint must see the layout it was trained on.

Each test computes its golden value by replicating the official function
(FreedomIntelligence/LongLLaVA, commit f349366; file and function cited on each replica) and
compares the SDK's result exactly. The SDK's deliberate deviations are documented in
docs/protocol.md and are not tested here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from longllava_sdk.highres import split_high_res
from longllava_sdk.modeling.pooling import pool_image_features
from longllava_sdk.processing import IGNORE_INDEX

pytestmark = pytest.mark.compat  # also run on the oldest allowed dependency versions (.ci/run)

OFFICIAL_IMAGE_TOKEN_INDEX = -200  # llava/constants.py IMAGE_TOKEN_INDEX
ROLES = ("<|startoftext|><|User|>\n", "<|startoftext|><|Assistant|>\n")  # conv_jambaInput.roles


# -- replicas of the official code -----------------------------------------------------------


def official_get_prompt(messages: list[tuple[str, str | None]], sep: str, sep2: str) -> str:
    """llava/conversation.py, ``Conversation.get_prompt``, ``SeparatorStyle.Jamba`` branch."""
    seps = [sep, sep2]
    ret = ""
    count = len(messages)
    for i, (role, message) in enumerate(messages):
        if message:
            if i % 2 == 1:
                if "<|endoftext|>" in message:
                    ret += role + message
                elif i == count - 1:
                    ret += role + message + "<|endoftext|>"
                else:
                    ret += role + message + seps[1]
            else:
                ret += role + message + seps[0]
        else:
            ret += role
    return ret


def official_tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """llava/mm_utils.py, ``tokenizer_image_token`` (one -200 id per ``<image>``)."""
    chunks = [tokenizer(chunk, add_special_tokens=False).input_ids for chunk in prompt.split("<image>")]
    ids: list[int] = []
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(OFFICIAL_IMAGE_TOKEN_INDEX)
        ids.extend(chunk)
    return ids


def official_preprocess_jamba(pairs: list[tuple[str, str]], tokenizer) -> tuple[list[int], list[int]]:
    """llava/train/train.py, ``preprocess_jamba`` (has_image=True) for one source."""
    def conversation(sep2: str) -> str:  # conv_jambaInput (sep2 "\n") / conv_jambaLabel (sep2 EOS)
        messages = []
        for question, answer in pairs:
            messages += [(ROLES[0], question), (ROLES[1], answer)]
        return official_get_prompt(messages, "\n", sep2)

    prompt_input, prompt_label = conversation("\n"), conversation("<|endoftext|>")
    input_ids = official_tokenizer_image_token(prompt_input, tokenizer)
    target = official_tokenizer_image_token(prompt_label, tokenizer)
    assert len(input_ids) == len(target)  # the official assert
    sep = "\n" + ROLES[1]  # conv_label.sep + conv_label.roles[1]
    cur_len = 0
    for rou in prompt_label.split("<|endoftext|>"):
        if rou == "":
            break
        rou += "<|endoftext|>"
        parts = rou.split(sep)
        assert len(parts) == 2
        parts[0] += sep
        round_len = len(official_tokenizer_image_token(rou, tokenizer))
        instruction_len = len(official_tokenizer_image_token(parts[0], tokenizer))
        target[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * (len(target) - cur_len)
    return input_ids, target


def official_expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """cli.py, ``Chatbot.get_image_tensors.expand2square`` (also llava/train/train.py)."""
    width, height = image.size
    if width == height:
        return image
    if width > height:
        result = Image.new(image.mode, (width, width), background)
        result.paste(image, (0, (width - height) // 2))
        return result
    result = Image.new(image.mode, (height, height), background)
    result.paste(image, ((height - width) // 2, 0))
    return result


def official_pixels(image: Image.Image, image_processor) -> torch.Tensor:
    """cli.py, ``Chatbot.get_image_tensors``: pad with ``int(x*255)`` of the mean, then preprocess."""
    padded = official_expand2square(image, tuple(int(x * 255) for x in image_processor.image_mean))
    return image_processor(images=[padded], return_tensors="pt")["pixel_values"]


def official_pool(features: torch.Tensor, mode: str) -> torch.Tensor:
    """llava/model/multimodal_encoder/clip_encoder.py, ``CLIPVisionTower.forward`` (resamplePooling)."""
    if mode == "2d":
        return torch.stack([
            F.interpolate(f.permute(1, 0).view(-1, 24, 24).unsqueeze(0), size=(12, 12), mode="bilinear",
                          align_corners=False).view(-1, 144).permute(1, 0)
            for f in features
        ])
    return torch.stack([
        F.interpolate(f.unsqueeze(0).permute(0, 2, 1), size=(144,), mode="linear",
                      align_corners=False).squeeze(0).permute(1, 0)
        for f in features
    ])


def official_best_fit_tiles(image: Image.Image, side: int = 336) -> list[np.ndarray]:
    """cli.py, ``processForBestFitPatch``: white ``copyMakeBorder`` of ``(new - old) // 2`` per side, then cut."""
    array = np.asarray(image.convert("RGB"))
    height, width = array.shape[:2]
    new_height = ((height + side - 1) // side) * side
    new_width = ((width + side - 1) // side) * side
    pad_h, pad_w = (new_height - height) // 2, (new_width - width) // 2
    padded = np.pad(array, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), constant_values=255)
    return [padded[i:i + side, j:j + side] for i in range(0, new_height, side) for j in range(0, new_width, side)]


# -- helpers ---------------------------------------------------------------------------------


def _collapse_images(ids: list[int], labels: list[int], image_token_id: int, tokens_per_image: int):
    """The SDK's ``tokens_per_image`` placeholder ids per image -> one official -200 id."""
    out_ids, out_labels, i = [], [], 0
    while i < len(ids):
        if ids[i] == image_token_id:
            assert ids[i:i + tokens_per_image] == [image_token_id] * tokens_per_image
            assert set(labels[i:i + tokens_per_image]) == {IGNORE_INDEX}
            out_ids.append(OFFICIAL_IMAGE_TOKEN_INDEX)
            out_labels.append(IGNORE_INDEX)
            i += tokens_per_image
        else:
            out_ids.append(ids[i])
            out_labels.append(labels[i])
            i += 1
    return out_ids, out_labels


def _picture(size=(300, 200), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# -- tests -----------------------------------------------------------------------------------


def test_multi_turn_inputs_and_labels_equal_official_preprocess_jamba(processor):
    turns = [("<img><image></img>\nIs there a nodule?", "Yes, in the right upper lobe."),
             ("How large is it?", "About 8 mm."),
             ("<img><image></img><img><image></img>\nCompare these two slices.", "The second is lower.")]
    official_ids, official_labels = official_preprocess_jamba(turns, processor.tokenizer)
    images = {0: [_picture()], 2: [_picture(seed=1), _picture(seed=2)]}
    messages = []
    for index, (question, answer) in enumerate(turns):
        # the SDK renders "<img><image></img>" per attached image, then "\n", then the text
        text = question.split("\n", 1)[1] if "<image>" in question else question
        messages += [{"role": "user", "content": text, "media": images.get(index, [])},
                     {"role": "assistant", "content": answer}]
    sample = processor.encode_conversation(messages)
    ids, labels = _collapse_images(sample.input_ids, sample.labels, processor.image_token_id,
                                   processor.tokens_per_image)
    assert ids == official_ids
    assert labels == official_labels
    # the separator after each non-final answer: "\n" in the input, <|endoftext|> as label
    newline = processor.tokenizer("\n", add_special_tokens=False).input_ids
    eos = processor.tokenizer.eos_token_id
    assert sum(1 for t, lab in zip(ids, labels) if [t] == newline and lab == eos) == 2
    assert labels[-1] == eos and ids[-1] == eos


def test_chat_history_prompt_equals_official_chatbot(processor):
    history = [("<img><image></img>\nWhat is shown?", "A chest CT."), ("Any nodule?", "No.")]
    messages = [(ROLES[0], q) if i % 2 == 0 else (ROLES[1], a)
                for q, a in history for i in (0, 1)]
    # cli.py Chatbot.get_conv: history, then the new question and an empty assistant turn
    official = official_get_prompt([*messages, (ROLES[0], "And effusion?"), (ROLES[1], None)], "\n", "\n")
    sdk_messages = []
    for question, answer in history:
        sdk_messages += [{"role": "user", "content": question.replace("<img><image></img>", "<image>"),
                          "media": [_picture()] if "<image>" in question else []},
                         {"role": "assistant", "content": answer}]
    sdk_messages.append({"role": "user", "content": "And effusion?"})
    assert processor.apply_chat_template(sdk_messages, add_generation_prompt=True) == official


@pytest.mark.parametrize("mode", ["1d", "2d"])
def test_pooling_equals_official_clip_encoder(mode):
    features = torch.randn(3, 576, 16)
    assert torch.equal(pool_image_features(features, mode, 144), official_pool(features, mode))


@pytest.mark.parametrize("size", [(300, 200), (200, 301), (336, 336), (41, 999)])
def test_pad_to_square_pixels_equal_official(processor, size):
    image = _picture(size)
    assert tuple(int(x * 255) for x in processor.image_processor.image_mean) == (122, 116, 104)
    assert torch.equal(processor.preprocess_images([image]), official_pixels(image, processor.image_processor))


@pytest.mark.parametrize("size", [(1000, 500), (700, 1100), (400, 400)])
def test_high_res_global_view_and_tiles_equal_official(processor, size):
    image = _picture(size, seed=3)
    overview, tiles, _ = split_high_res(image)
    # global view: official feeds the original image through expand2square + the CLIP processor
    assert torch.equal(processor.preprocess_images([overview]), official_pixels(image, processor.image_processor))
    # sub-images (even padding here; the odd-padding fix is a documented deviation)
    official_tiles = official_best_fit_tiles(image)
    assert len(tiles) == len(official_tiles)
    for ours, theirs in zip(tiles, official_tiles):
        np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_pipeline_samples_128_video_frames_by_default(tiny_model, processor, tmp_path, monkeypatch):
    import av

    from longllava_sdk import Pipeline

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for index in range(300):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    pipe = Pipeline(tiny_model, processor)
    seen: list[int] = []
    monkeypatch.setattr(pipe, "_generate", lambda messages, stream, **gen: seen.append(
        sum(len(m) for m in messages[-1]["media"])) or "")
    monkeypatch.setattr(tiny_model.config, "max_context", 65536)  # room for more than 128 frames
    pipe("What happens?", video=path)
    pipe("What happens?", video=path, max_images=200)
    assert seen == [128, 200]


def test_stage_learning_rates_are_the_official_scripts():
    from longllava_sdk.training.stages import STAGES

    # Align.sh --learning_rate 1e-4; SingleImageSFT.sh / MultiImageSFT.sh --learning_rate 1e-5
    assert STAGES["align"].learning_rate == 1e-4
    assert STAGES["sft-single"].learning_rate == STAGES["sft-multi"].learning_rate == 1e-5
