"""Expert findings in the prompt (issue 18 item 3): one rendering for Pipeline, training data and serve.

A programmatic expert plugin describes each media source; its text must be in the tokens the
model sees (decoded input ids), before the question, and absent with ``experts=[]``.
The example plugin's real CT expert is tested in tests/test_plugins.py (pip-installed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longllava_sdk import Pipeline, hookimpl
from longllava_sdk.errors import RegistryLookupError
from longllava_sdk.experts import FINDINGS_HEADER, available_experts, expert_findings, selected_experts
from longllava_sdk.plugin_manager import get_plugin_manager

EXPERT = "test_media_expert"


class MediaExpert:
    """Says how many images a source has; nothing about a source called skip.png."""

    @hookimpl
    def longllava_expert_findings(self, media):
        if Path(str(media.source)).name == "skip.png":
            return None
        return f"the source has {len(media)} image(s) of kind {media.kind}"


@pytest.fixture
def expert():
    pm = get_plugin_manager()
    pm.register(MediaExpert(), name=EXPERT)
    try:
        yield EXPERT
    finally:
        pm.unregister(name=EXPERT)


@pytest.fixture
def image_file(tmp_path, rgb_images):
    path = tmp_path / "red.png"
    rgb_images[0].save(path)
    return path


def _prompt(pipe, messages, **kwargs):
    ids = pipe.inputs(messages, **kwargs)["input_ids"][0]
    return pipe.processor.tokenizer.decode(ids)


def test_the_expert_is_listed_and_its_text_found(expert, image_file, tiny_model_and_processor):
    assert EXPERT in available_experts()
    pipe = Pipeline(*tiny_model_and_processor)
    media = pipe.collect_media([image_file])
    assert expert_findings(media[0]) == [(EXPERT, "the source has 1 image(s) of kind images")]
    with selected_experts([]):
        pass
    with pytest.raises(RegistryLookupError, match="did you mean 'test_media_expert'"):
        expert_findings(media[0], ["test_media_expertt"])


def test_pipeline_prompt_holds_the_findings_before_the_question(expert, image_file, tiny_model_and_processor):
    pipe = Pipeline(*tiny_model_and_processor)
    messages = [{"role": "user", "content": "What colour is the square?", "media": pipe.collect_media([image_file])}]
    with_expert = _prompt(pipe, messages)
    finding = f"{FINDINGS_HEADER}\n- {EXPERT}: the source has 1 image(s) of kind images\nWhat colour is the square?"
    assert finding in with_expert
    assert with_expert.index("</img>") < with_expert.index(FINDINGS_HEADER)  # after the media, before the question
    without = _prompt(pipe, messages, experts=[])
    assert FINDINGS_HEADER not in without and "What colour is the square?" in without
    assert without == with_expert.replace(f"{FINDINGS_HEADER}\n- {EXPERT}: the source has 1 image(s) of kind "
                                          "images\n", "")
    chosen = Pipeline(*tiny_model_and_processor, experts=[])
    assert FINDINGS_HEADER not in _prompt(chosen, messages)
    assert finding in _prompt(chosen, messages, experts=[EXPERT])


def test_an_expert_with_nothing_to_say_adds_nothing(expert, tmp_path, rgb_images, tiny_model_and_processor):
    path = tmp_path / "skip.png"
    rgb_images[1].save(path)
    pipe = Pipeline(*tiny_model_and_processor)
    messages = [{"role": "user", "content": "<image>\nWhat is it?", "media": pipe.collect_media([path])}]
    assert FINDINGS_HEADER not in _prompt(pipe, messages)


def test_findings_follow_the_last_marked_media(expert, image_file, tiny_model_and_processor):
    pipe = Pipeline(*tiny_model_and_processor)
    messages = [{"role": "user", "content": "<image>\nWhat is it?", "media": pipe.collect_media([image_file])}]
    text = pipe.processor.render_conversation(messages, add_generation_prompt=True)
    assert f"</img>\n{FINDINGS_HEADER}\n- {EXPERT}: the source has 1 image(s) of kind images\nWhat is it?" in text


def test_training_samples_hold_the_findings(expert, tmp_path, rgb_images, tiny_model_and_processor):
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.data import prepare_datasets

    _, processor = tiny_model_and_processor
    rgb_images[2].save(tmp_path / "blue.png")
    rows = [{"id": "a", "image": "blue.png",
             "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Blue."}]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sample = prepare_datasets(processor, data_path=tmp_path / "d.jsonl", max_length=4000).train[0]
    text = processor.tokenizer.decode(sample.input_ids)
    assert f"{FINDINGS_HEADER}\n- {EXPERT}: the source has 1 image(s) of kind images\nWhat colour?" in text
    recipe = Recipe(name="no-experts", experts=[])
    plain = prepare_datasets(processor, recipe, data_path=tmp_path / "d.jsonl", max_length=4000).train[0]
    assert FINDINGS_HEADER not in processor.tokenizer.decode(plain.input_ids)
    assert len(plain.input_ids) < len(sample.input_ids)


def test_serve_prompt_holds_the_findings_and_a_request_chooses(expert, tiny_checkpoint, tmp_path, rgb_images):
    from serving_fixtures import running_server, user

    from longllava_sdk.serving import ServerSettings, create_app

    rgb_images[0].save(tmp_path / "red.png")
    pipe = Pipeline.from_pretrained(tiny_checkpoint)
    part = {"type": "image_url", "image_url": {"url": "red.png"}}
    messages = [{"role": "user", "content": "What colour?", "media": pipe.collect_media([tmp_path / "red.png"])}]
    with_expert = int(pipe.inputs(messages)["input_ids"].shape[1])
    without = int(pipe.inputs(messages, experts=[])["input_ids"].shape[1])
    assert with_expert > without
    with running_server(create_app(pipe, ServerSettings(model_name="tiny", root=tmp_path))) as server:
        client = server.client(None)
        default = client.chat.completions.create(model="tiny", messages=[user("What colour?", part)], max_tokens=2,
                                                 temperature=0)
        assert default.usage.prompt_tokens == with_expert
        none = client.chat.completions.create(model="tiny", messages=[user("What colour?", part)], max_tokens=2,
                                              temperature=0, extra_body={"experts": []})
        assert none.usage.prompt_tokens == without
        import openai

        with pytest.raises(openai.BadRequestError, match="unknown expert"):
            client.chat.completions.create(model="tiny", messages=[user("What colour?", part)], max_tokens=2,
                                           extra_body={"experts": ["nope"]})


def test_infer_experts_flag_is_checked_before_the_model_loads(expert, tmp_path, capsys):
    from longllava_sdk.cli import main

    assert main(["infer", "--model", str(tmp_path / "no-model"), "--prompt", "x", "--experts", "test_media_expertt"]) == 1
    err = capsys.readouterr().err
    assert "did you mean 'test_media_expert'" in err and "no-model" not in err


def test_infer_experts_none_gives_the_plain_prompt(expert, tiny_checkpoint, image_file, capsys):
    from longllava_sdk.cli import main

    argv = ["infer", "--model", str(tiny_checkpoint), "--image", str(image_file), "--prompt", "Colour?",
            "--max-new-tokens", "3", "--no-stream", "--device", "cpu"]
    assert main([*argv, "--experts", "none"]) == 0
    plain = capsys.readouterr().out
    pipe = Pipeline.from_pretrained(tiny_checkpoint, device="cpu", experts=[])
    assert plain.strip() == pipe("Colour?", images=[image_file], max_new_tokens=3)


def test_serve_classify_takes_the_experts_field(expert, tiny_model_and_processor, tmp_path, rgb_images):
    import httpx
    import torch
    from serving_fixtures import running_server, user

    from longllava_sdk.model_folders import save_model
    from longllava_sdk.registry import get_head_class
    from longllava_sdk.serving import ServerSettings, create_app

    model, processor = tiny_model_and_processor
    head = get_head_class("classify")(model.config.text_config.hidden_size, ["red", "blue"], dropout=0.0)
    with torch.no_grad():
        head.classifier.weight.normal_()
    pipe = Pipeline.from_pretrained(save_model(model, processor, tmp_path / "with-head", head=head))
    rgb_images[0].save(tmp_path / "red.png")
    part = {"type": "image", "image": {"path": "red.png"}}
    expected = {name: pipe.classify("What colour?", images=[tmp_path / "red.png"], **kwargs)["scores"]
                for name, kwargs in (("default", {}), ("none", {"experts": []}))}
    assert expected["default"] != pytest.approx(expected["none"])  # the findings change what the head sees
    with running_server(create_app(pipe, ServerSettings(model_name="tiny", root=tmp_path))) as server:
        def classify(**extra):
            return httpx.post(f"{server.url}/v1/classify", timeout=60,
                              json={"model": "tiny", "messages": [user("What colour?", part)], **extra})

        default, none, unknown = classify(), classify(experts=[]), classify(experts=["nope"])
    assert default.json()["result"]["scores"] == pytest.approx(expected["default"])
    assert none.json()["result"]["scores"] == pytest.approx(expected["none"])
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "experts"
    assert "unknown expert" in unknown.json()["error"]["message"]
