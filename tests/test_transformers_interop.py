"""A saved model folder works with plain transformers and peft (docs/checkpoints.md).

* ``import longllava_sdk`` alone registers the Auto classes: a LoRA run's ``adapter/`` loads
  onto ``AutoModelForCausalLM.from_pretrained(base)`` with ``PeftModel.from_pretrained`` in a
  fresh interpreter, and computes what the SDK's merged model computes.
* ``AutoProcessor.from_pretrained(folder)`` returns a ``LongLLaVAProcessor`` (a
  ``ProcessorMixin``) whose Jinja chat template renders exactly the SDK's layout.
* ``transformers.pipeline("image-text-to-text", model=folder)`` generates what ``Pipeline`` and
  ``model.generate`` generate.
* ``processor(text=..., images=...)`` takes chat-templated prompts (transformers' convention).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from packaging.version import Version
from PIL import Image
from transformers import AutoProcessor, ProcessorMixin

from longllava_sdk import Media, Pipeline
from longllava_sdk.errors import InputError, ProtocolError
from longllava_sdk.model_folders import load_model
from longllava_sdk.processing import LongLLaVAProcessor, protocol
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import make_micro_model, square_image, write_colour_dataset, write_micro_model

QUESTION = "What colour is the square?"


@pytest.fixture(scope="module")
def micro_folder(tmp_path_factory):
    """A saved micro model folder (56 px images, 4 tokens per image)."""
    return write_micro_model(tmp_path_factory.mktemp("interop") / "micro")


@pytest.fixture(scope="module")
def micro_processor(micro_folder):
    return LongLLaVAProcessor.from_pretrained(micro_folder)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    paths = []
    for index, colour in enumerate(("red", "blue")):
        path = root / f"{colour}.png"
        square_image(colour, seed=index).save(path)
        paths.append(path)
    return paths


def _red(size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (220, 30, 30))


# -- peft: the LoRA run's adapter on the plain transformers model ---------------------------------

PLAIN_LOAD = textwrap.dedent("""
    import sys

    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

    import longllava_sdk  # noqa: F401  (registers the Auto classes; nothing else of the SDK is used)

    base_dir, adapter_dir, out = sys.argv[1:4]
    processor = AutoProcessor.from_pretrained(adapter_dir)  # the processor files a LoRA run saves with its adapter
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What colour is the square?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
    results = {name: inputs[name] for name in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        results["adapted"] = adapted(**inputs).logits
        for auto in (AutoModel, AutoModelForImageTextToText):
            results[auto.__name__] = auto.from_pretrained(base_dir).eval()(**inputs).logits
    torch.save(results, out)
    print(type(processor).__name__, type(base).__name__)
""")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A two-step LoRA run (generate head) on the micro model: (base folder, run folder)."""
    from longllava_sdk.training.finetuning import finetune

    root = tmp_path_factory.mktemp("lora")
    recipe = write_colour_dataset(root / "data", n=4, head="generate", eval_fraction=0.25)
    base = write_micro_model(root / "base")
    result = finetune(str(recipe), model=str(base), output=str(root / "run"), max_steps=2)
    assert result.adapter_dir is not None and result.model_dir is not None
    return base, root / "run"


@pytest.mark.compat
def test_plain_transformers_and_peft_load_a_lora_run_like_the_merged_model(lora_run, tmp_path):
    base, run = lora_run
    out = tmp_path / "plain.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(base), str(run / "adapter"), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["LongLLaVAProcessor", "LongLLaVAForConditionalGeneration"]
    plain = torch.load(out, weights_only=True)

    # The HF-format chat built the same ids as the SDK's own conversation input.
    merged, processor = load_model(run / "model")
    sdk_inputs = processor(messages=[{"role": "user", "content": QUESTION,
                                      "media": [Image.new("RGB", (56, 56), (200, 30, 30))]}])
    assert torch.equal(plain["input_ids"], sdk_inputs["input_ids"])
    assert torch.equal(plain["pixel_values"], sdk_inputs["pixel_values"])

    inputs = {name: plain[name] for name in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        merged_logits = merged.eval()(**inputs).logits
        base_model, _ = load_model(base)
        base_logits = base_model.eval()(**inputs).logits
    torch.testing.assert_close(plain["adapted"], merged_logits, atol=1e-4, rtol=0)
    # the adapter changed the model (so the comparison above can fail) ...
    assert (plain["adapted"] - base_logits).abs().max() > 1e-3
    # ... and every Auto class builds the same (base) model
    torch.testing.assert_close(plain["AutoModel"], base_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain["AutoModelForImageTextToText"], base_logits, atol=1e-5, rtol=0)


@pytest.mark.compat
# peft 0.18 (the oldest supported) warns about the fused-expert module it adapts correctly; the
# docs name this upstream message, and the test is about the snippet running as written.
@pytest.mark.filterwarnings("ignore:Unsupported layer type .*JambaExperts:UserWarning")
def test_the_documented_snippet_runs(lora_run, tmp_path, monkeypatch, capsys):
    """docs/checkpoints.md, "Plain transformers, peft and the HF pipeline", as written."""
    import re
    import shutil

    docs = (Path(__file__).resolve().parents[1] / "docs" / "checkpoints.md").read_text()
    section = docs.split("## Plain transformers, peft and the HF pipeline", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    base, run = lora_run
    target = tmp_path / "runs" / "medical-domain-lora"
    shutil.copytree(base, target / "base-model")
    for name in ("adapter", "model"):
        shutil.copytree(run / name, target / name)
    square_image("red").save(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/checkpoints.md", "exec"), {})  # noqa: S102 - our own docs
    printed = capsys.readouterr().out
    # two answers, the adapted model's and the merged model's in the pipeline: the same greedy text
    answer = printed[: len(printed) // 2]
    assert printed == answer * 2 and answer.endswith("\n") and answer.strip(), printed


# -- AutoProcessor ------------------------------------------------------------------------------


@pytest.mark.compat
def test_auto_processor_returns_the_processor_and_round_trips(tmp_path):
    _, original = make_micro_model()
    original.save_pretrained(tmp_path / "saved")
    assert {"processor_config.json", "chat_template.jinja", "longllava_processor.json",
            "preprocessor_config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "saved").iterdir()}
    # A processor-only folder: AutoProcessor finds the class by processor_config.json.
    loaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(loaded) is LongLLaVAProcessor and isinstance(loaded, ProcessorMixin)
    assert LongLLaVAProcessor.get_attributes() == ["tokenizer", "image_processor"]
    assert loaded.settings == original.settings == {"tokens_per_image": 4, "image_token_id": 512,
                                                    "pad_to_square": True}
    assert loaded.chat_template == original.chat_template == protocol.CHAT_TEMPLATE
    prompt = original.apply_chat_template([{"role": "user", "content": QUESTION, "media": [_red()]}],
                                          add_generation_prompt=True)
    assert torch.equal(loaded(text=prompt, images=[_red()])["input_ids"],
                       original(text=prompt, images=[_red()])["input_ids"])
    assert torch.equal(loaded.preprocess_images([_red()]), original.preprocess_images([_red()]))
    # saving what was loaded writes the same files again
    loaded.save_pretrained(tmp_path / "again")
    for name in ("processor_config.json", "chat_template.jinja", "longllava_processor.json",
                 "preprocessor_config.json", "tokenizer.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name
    # the loader options AutoProcessor and pipeline() pass along are accepted (and no hub is asked)
    assert type(AutoProcessor.from_pretrained(tmp_path / "saved", trust_remote_code=False, revision=None,
                                              local_files_only=True, dtype=torch.float32)) is LongLLaVAProcessor
    assert LongLLaVAProcessor.from_pretrained(tmp_path, subfolder="saved").settings == original.settings


@pytest.mark.compat
def test_auto_processor_on_a_model_folder_saved_before_processor_config(micro_folder, tmp_path):
    """Older folders have only longllava_processor.json: the model type leads AutoProcessor to the class."""
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(micro_folder, legacy)
    (legacy / "processor_config.json").unlink()
    (legacy / "chat_template.jinja").unlink()
    loaded = AutoProcessor.from_pretrained(legacy)
    assert type(loaded) is LongLLaVAProcessor
    assert loaded.settings["tokens_per_image"] == 4 and loaded.chat_template == protocol.CHAT_TEMPLATE


@pytest.mark.compat
def test_inconsistent_or_foreign_processor_files_are_refused(micro_folder, tmp_path):
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(micro_folder, folder)
    config = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**config, "tokens_per_image": 9}))
    with pytest.raises(InputError, match="disagree on tokens_per_image"):
        LongLLaVAProcessor.from_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({**config, "processor_class": "LlavaProcessor"}))
    with pytest.raises(InputError, match="LlavaProcessor, not a LongLLaVA processor"):
        LongLLaVAProcessor.from_pretrained(folder)
    with pytest.raises(InputError, match="locally only"):
        LongLLaVAProcessor.from_pretrained(micro_folder).save_pretrained(tmp_path / "x", push_to_hub=True)


# -- the chat template -------------------------------------------------------------------------


def _conversations(case: str) -> tuple[list[dict], list[dict]]:
    """The same conversation as SDK messages (text + media) and as HF content parts."""
    a, b, c = _red(), _red((20, 50)), _red((64, 64))

    def hf_user(text: str, *images: Image.Image) -> dict:
        return {"role": "user", "content": [*({"type": "image", "image": i} for i in images),
                                            {"type": "text", "text": text}]}

    if case == "single turn":
        return ([{"role": "user", "content": QUESTION, "media": [a]}], [hf_user(QUESTION, a)])
    if case == "several images":
        return ([{"role": "user", "content": "Compare them.", "media": [a, b, c]}], [hf_user("Compare them.", a, b, c)])
    if case == "inline images":
        sdk = [{"role": "user", "content": "Is <image> brighter than <image>?", "media": [a, b]}]
        hf = [{"role": "user", "content": [{"type": "text", "text": "Is "}, {"type": "image", "image": a},
                                           {"type": "text", "text": " brighter than "},
                                           {"type": "image", "image": b}, {"type": "text", "text": "?"}]}]
        return sdk, hf
    if case == "images only":
        return ([{"role": "user", "content": "", "media": [a]}],
                [{"role": "user", "content": [{"type": "image", "image": a}]}])
    if case == "system message":
        return ([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": QUESTION,
                                                                        "media": [a]}],
                [{"role": "system", "content": [{"type": "text", "text": "Answer in one word."}]},
                 hf_user(QUESTION, a)])
    if case in ("multi turn", "ends with an answer"):
        sdk = [{"role": "user", "content": QUESTION, "media": [a]}, {"role": "assistant", "content": "Red."},
               {"role": "user", "content": "And this one?", "media": [b]}]
        hf = [hf_user(QUESTION, a), {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
              hf_user("And this one?", b)]
        if case == "ends with an answer":
            sdk.append({"role": "assistant", "content": "Also red."})
            hf.append({"role": "assistant", "content": "Also red."})
        return sdk, hf
    raise AssertionError(case)


CASES = ["single turn", "several images", "inline images", "images only", "system message", "multi turn",
         "ends with an answer"]


@pytest.mark.compat
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_jinja_template_renders_exactly_the_sdk_layout(micro_processor, case, add_generation_prompt):
    sdk, hf = _conversations(case)
    expected = micro_processor.render_conversation(sdk, add_generation_prompt)
    assert micro_processor.apply_chat_template(hf, add_generation_prompt=add_generation_prompt) == expected
    assert micro_processor.apply_chat_template(sdk, add_generation_prompt=add_generation_prompt) == expected
    # transformers' own renderer, given the saved template, agrees (a template is data other tools render)
    assert micro_processor.tokenizer.apply_chat_template(
        hf, chat_template=micro_processor.chat_template, tokenize=False,
        add_generation_prompt=add_generation_prompt) == expected
    # and the layout is the released model's (spelled out for the plainest case)
    if case == "single turn":
        assert expected == ("<|startoftext|><|User|>\n<img><image></img>\nWhat colour is the square?\n"
                            + ("<|startoftext|><|Assistant|>\n" if add_generation_prompt else ""))


@pytest.mark.compat
def test_chat_template_renders_media_kinds_continues_answers_and_refuses_bad_conversations(micro_processor):
    video = Media(kind="video", images=[_red()] * 3)
    sdk = [{"role": "user", "content": "What happens?", "media": [video]}]
    assert micro_processor.apply_chat_template(sdk) == micro_processor.render_conversation(sdk)
    assert "<vid><img><image></img><t>" in micro_processor.apply_chat_template(sdk)
    prefilled = [*_conversations("single turn")[1], {"role": "assistant", "content": "The square is"}]
    assert micro_processor.apply_chat_template(prefilled, continue_final_message=True).endswith(
        "<|startoftext|><|Assistant|>\nThe square is")
    late_system = [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief."}]
    with pytest.raises(ProtocolError, match="system message may only open"):
        micro_processor.apply_chat_template(late_system)
    with pytest.raises(Exception, match="system message may only open"):  # transformers' renderer too
        micro_processor.tokenizer.apply_chat_template(late_system, chat_template=micro_processor.chat_template,
                                                      tokenize=False)
    with pytest.raises(ProtocolError, match="not a text or image part"):
        micro_processor.apply_chat_template([{"role": "user", "content": [{"type": "video", "path": "a.mp4"}]}])
    with pytest.raises(InputError, match="local files only"):
        micro_processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image", "url": "https://example.com/a.png"}]}], tokenize=True)
    with pytest.raises(TypeError, match="add_generation_prompt= by keyword"):
        micro_processor.apply_chat_template(sdk, True)


# -- processor(text=..., images=...) -----------------------------------------------------------------


@pytest.mark.compat
def test_text_is_a_templated_prompt_whose_placeholders_expand(micro_processor):
    p = micro_processor
    messages = [{"role": "user", "content": QUESTION, "media": [_red()]}]
    prompt = p.apply_chat_template(messages, add_generation_prompt=True)
    by_text, by_messages = p(text=prompt, images=[_red()]), p(messages=messages)
    assert torch.equal(by_text["input_ids"], by_messages["input_ids"])
    assert torch.equal(by_text["pixel_values"], by_messages["pixel_values"])
    assert int((by_text["input_ids"] == p.image_token_id).sum()) == p.tokens_per_image
    # the text is not wrapped in a user turn any more: it is tokenized as given
    assert p(text="Hi")["input_ids"][0].tolist() == p.tokenizer("Hi", add_special_tokens=False)["input_ids"]
    with pytest.raises(ProtocolError, match="0 image placeholders in the text but 1 images"):
        p(text="Hi", images=[_red()])
    with pytest.raises(TypeError, match="prompt string"):
        p(_red(), "Hi")


@pytest.mark.compat
def test_images_are_a_flat_list_or_one_list_per_prompt(micro_processor, image_paths):
    p = micro_processor
    prompts = [p.apply_chat_template([{"role": "user", "content": "Compare.", "media": [_red(), _red()]}]),
               p.apply_chat_template([{"role": "user", "content": "No image here."}]),
               p.apply_chat_template([{"role": "user", "content": QUESTION, "media": [_red()]}])]
    red, blue = (Image.open(path).convert("RGB") for path in image_paths)
    flat = p(text=prompts, images=[red, blue, str(image_paths[0])])
    nested = p(text=prompts, images=[[red, blue], [], [image_paths[0]]])
    assert torch.equal(flat["input_ids"], nested["input_ids"])
    assert torch.equal(flat["pixel_values"], nested["pixel_values"]) and flat["pixel_values"].shape[0] == 3
    assert flat["attention_mask"][1, 0] == 0  # the text-only prompt is left-padded
    with pytest.raises(ProtocolError, match="3 image placeholders in the text but 2 images"):
        p(text=prompts, images=[red, blue])
    with pytest.raises(ProtocolError, match="3 prompts but 2 image lists"):
        p(text=prompts, images=[[red, blue], [red]])
    with pytest.raises(ProtocolError, match="prompt 0: 2 image placeholders in the text but 1 images"):
        p(text=prompts, images=[[red], [], [red, blue]])


@pytest.mark.compat
def test_decoding_drops_the_out_of_vocabulary_image_placeholder(micro_processor):
    p = micro_processor
    assert p.image_token_id >= p.tokenizer.vocab_size  # the placeholder id lies outside the vocabulary
    prompt = p.apply_chat_template([{"role": "user", "content": QUESTION, "media": [_red()]}],
                                   add_generation_prompt=True)
    ids = p(text=prompt, images=[_red()])["input_ids"]
    text_ids = ids[ids != p.image_token_id].unsqueeze(0)
    expected = p.tokenizer.batch_decode(text_ids, skip_special_tokens=True)
    assert p.batch_decode(ids) == expected == p.post_process_image_text_to_text(ids)
    assert p.post_process_image_text_to_text(ids[0]) == expected
    assert p.decode(ids[0], skip_special_tokens=False).startswith("<|startoftext|><|User|>\n<img></img>")


# -- transformers' image-text-to-text pipeline --------------------------------------------------------


def _hf_generated(hf_pipe, messages: list[dict], max_new_tokens: int) -> str:
    out = hf_pipe(text=messages, max_new_tokens=max_new_tokens, return_full_text=False)
    return out[0]["generated_text"]


@pytest.mark.compat
def test_hf_pipeline_generates_what_pipeline_and_generate_do(micro_folder, image_paths):
    from transformers import pipeline

    hf_pipe = pipeline("image-text-to-text", model=str(micro_folder))
    assert type(hf_pipe.processor) is LongLLaVAProcessor
    sdk_pipe = Pipeline.from_pretrained(micro_folder, device="cpu")
    model, processor = sdk_pipe.model, sdk_pipe.processor

    def generated(sdk_messages: list[dict]) -> str:
        inputs = processor(messages=sdk_messages)
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False,
                                eos_token_id=processor.tokenizer.eos_token_id,
                                pad_token_id=processor.tokenizer.pad_token_id)
        return processor.decode(output[0, inputs["input_ids"].shape[1]:])

    red_path, blue_path = image_paths
    # one question about a local image file
    hf_text = _hf_generated(hf_pipe, [{"role": "user", "content": [{"type": "image", "image": str(red_path)},
                                                                   {"type": "text", "text": QUESTION}]}], 6)
    assert hf_text != ""  # the random micro model answers something, so the comparisons below can fail
    assert hf_text == generated([{"role": "user", "content": QUESTION, "media": [red_path]}])
    assert hf_text.strip() == sdk_pipe(QUESTION, images=[red_path], max_new_tokens=6)

    # a second turn with a PIL image, the first answer in the history
    history = [{"role": "user", "content": [{"type": "image", "path": str(red_path)},
                                            {"type": "text", "text": QUESTION}]},
               {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
               {"role": "user", "content": [{"type": "image", "image": Image.open(blue_path)},
                                            {"type": "text", "text": "And this one?"}]}]
    sdk_history = [{"role": "user", "content": QUESTION, "media": [red_path]},
                   {"role": "assistant", "content": "red"},
                   {"role": "user", "content": "And this one?", "media": [blue_path]}]
    assert _hf_generated(hf_pipe, history, 6) == generated(sdk_history)


QUIET_PIPELINE = textwrap.dedent("""
    import sys

    from transformers import pipeline

    import longllava_sdk  # noqa: F401

    folder, image = sys.argv[1:3]
    hf_pipe = pipeline("image-text-to-text", model=folder)
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What colour is the square?"}]}]
    print(repr(hf_pipe(text=messages, max_new_tokens=3, return_full_text=False)[0]["generated_text"]))
""")


@pytest.mark.skipif(Version(transformers.__version__) < Version("5.24"),
                    reason="transformers' own image-text-to-text pipeline before 5.24 (seen on 5.19) warns about "
                           "the generation arguments it passes itself, for every model")
def test_hf_pipeline_console_is_quiet(micro_folder, image_paths, tmp_path):
    """Nothing on the path of transformers' pipeline warns, in a fresh interpreter (every
    ``warning_once`` can fire there)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", QUIET_PIPELINE, str(micro_folder), str(image_paths[0])],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() not in ("", "''")
    noise = [line for line in (done.stdout + done.stderr).splitlines()
             if any(word in line.lower() for word in ("warn", "deprecat", "not supported", "error"))]
    assert not noise, noise
