"""``longllava-sdk serve`` through the official ``openai`` client against a running server.

One uvicorn server on 127.0.0.1 (ephemeral port) serves the tiny random-weight model with an
API key and a root holding real sample files. Answers are compared with what the Pipeline
itself answers for the same prompt and media (greedy decoding), so a part that reached the
model differently (wrong turn, wrong adapter options, media dropped) fails the comparison.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
import torch

from longllava_sdk import Pipeline
from longllava_sdk.serving import ServerSettings, create_app
from serving_fixtures import SECRET, data_url, make_root, png_bytes, running_server, user, wait_ready

# Part of the compatibility subset: CI also runs it on the oldest allowed server stack.
pytestmark = pytest.mark.compat

KEY = "test-key"
MODEL = "tiny"


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(pipe, root):
    app = create_app(pipe, ServerSettings(model_name=MODEL, root=root, api_key=KEY))
    with running_server(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server.client(KEY)


def chat(client, *messages, **options):
    options.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=MODEL, messages=list(messages), temperature=0, **options)


def reference(pipe, messages, max_new_tokens):
    """What the Pipeline answers for messages whose turns carry their own media (greedy)."""
    inputs = pipe.inputs(messages)
    with torch.inference_mode():
        out = pipe.model.generate(**inputs, **pipe.generation_kwargs(max_new_tokens=max_new_tokens))
    prompt = inputs["input_ids"].shape[1]
    return pipe.processor.decode(out[0, prompt:]).strip(), prompt


# -- models, health --------------------------------------------------------------------------------
def test_models_lists_the_served_model_and_health_is_open(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"{server.url}/health")  # no key: /health stays open for load balancers
    assert health.status_code == 200 and health.json() == {"status": "ready"}


# -- text ------------------------------------------------------------------------------------------
def test_non_streaming_answer_is_the_pipelines_answer(pipe, client):
    response = chat(client, {"role": "user", "content": "Describe the slide."}, max_tokens=24)
    assert response.object == "chat.completion" and response.model == MODEL
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == pipe("Describe the slide.", max_new_tokens=24)
    expected, prompt = reference(pipe, [{"role": "user", "content": "Describe the slide.", "media": []}], 24)
    assert response.usage.prompt_tokens == prompt
    assert response.usage.total_tokens == prompt + response.usage.completion_tokens
    assert response.choices[0].finish_reason in ("stop", "length")


def test_streaming_chunks_reassemble_to_the_non_streaming_answer(server, client):
    messages = [{"role": "user", "content": "Tell me about it."}]
    whole = chat(client, *messages, max_tokens=40)
    stream = chat(client, *messages, max_tokens=40, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really piece by piece

    # On the wire: server-sent events, OpenAI's chunk objects, closed by [DONE].
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": MODEL, "messages": messages, "max_tokens": 5, "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = [line for line in raw.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_stop_strings_end_the_answer_and_the_generation(server, client):
    messages = [{"role": "user", "content": "Say something long."}]
    full = chat(client, *messages, max_tokens=40).choices[0].message.content
    stop = full[10:13]
    expected = full[:full.find(stop)].rstrip()
    response = chat(client, *messages, max_tokens=40, stop=[stop, "never-there"])
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, *messages, max_tokens=40, stop=stop,
                                                                      stream=True))
    assert streamed == expected
    assert server.wait_idle()
    assert server.engine.records[-1].outcome == "stop" and server.engine.records[-1].steps < 40


# -- images ------------------------------------------------------------------------------------------
def test_a_data_url_image_reaches_the_model_like_the_same_file(pipe, client, tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    part = {"type": "image_url", "image_url": {"url": data_url(path.read_bytes())}}
    response = chat(client, user("What is shown?", part))
    expected, prompt = reference(pipe, [{"role": "user", "content": "What is shown?",
                                         "media": pipe.collect_media([path])}], 12)
    assert response.choices[0].message.content == expected
    assert response.usage.prompt_tokens == prompt > pipe.config.tokens_per_image


def test_server_side_image_paths_under_the_root(pipe, client, root):
    image = root / "images/ihc_01.png"
    by_url = chat(client, user("What stain?", {"type": "image_url", "image_url": {"url": "images/ihc_01.png"}}))
    expected, prompt = reference(pipe, [{"role": "user", "content": "What stain?",
                                         "media": pipe.collect_media([image])}], 12)
    assert by_url.choices[0].message.content == expected and by_url.usage.prompt_tokens == prompt
    absolute = chat(client, user("What stain?", {"type": "image", "image": {"path": str(image)}}))
    assert absolute.choices[0].message.content == expected

    high = chat(client, user("What stain?", {"type": "image", "image": {"path": "images/ihc_01.png",
                                                                        "high_res": True}}))
    expected_high, prompt_high = reference(pipe, [{"role": "user", "content": "What stain?",
                                                   "media": pipe.collect_media([image], high_res=True)}], 12)
    assert high.choices[0].message.content == expected_high and high.usage.prompt_tokens == prompt_high > prompt
    detail = chat(client, user("What stain?", {"type": "image_url", "image_url": {"url": "images/ihc_01.png",
                                                                                  "detail": "high"}}))
    assert detail.usage.prompt_tokens == prompt_high


@pytest.mark.parametrize("part, keyword, options", [
    ({"type": "volume", "volume": {"path": "ct/series_01", "adapter_options": {"window": "lung"}}},
     {"volume": "ct/series_01"}, {"adapter_options": {"window": "lung"}}),
    ({"type": "volume", "volume": {"path": "mri/anatomical.nii", "max_images": 6}},
     {"volume": "mri/anatomical.nii"}, {"max_images": 6}),
    ({"type": "video", "video": {"path": "clips/bikes_1.mp4", "max_images": 8,
                                 "adapter_options": {"sampling": "uniform"}}},
     {"video": "clips/bikes_1.mp4"}, {"max_images": 8, "adapter_options": {"sampling": "uniform"}}),
    ({"type": "tiled", "tiled": {"path": "scenes/rmnp_01.tif"}}, {"tiled": "scenes/rmnp_01.tif"}, {}),
], ids=["dicom-folder", "nifti", "video", "geotiff"])
def test_volume_video_and_tiled_parts_read_real_files_with_their_adapter(pipe, client, root, part, keyword, options):
    response = chat(client, user("What is in it?", part), max_tokens=8)
    (name, relative), = keyword.items()
    media = pipe.collect_media(**{name: root / relative}, **options)
    expected, prompt = reference(pipe, [{"role": "user", "content": "What is in it?", "media": media}], 8)
    assert media[0].kind == {"volume": "volume", "video": "video", "tiled": "tiled"}[name]
    assert response.usage.prompt_tokens == prompt
    assert response.choices[0].message.content == expected


def test_an_adapter_option_the_operator_keeps_is_refused(client):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, user("x", {"type": "image", "image": {"path": "images/ihc_01.png",
                                                           "adapter_options": {"max_pixels": None}}}))
    assert caught.value.body["code"] == "adapter_option_refused" and "max_pixels" in caught.value.body["message"]


def test_multi_turn_messages_keep_each_turns_media(pipe, client, root, tmp_path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    red.write_bytes(png_bytes(colour=(220, 0, 0)))
    blue.write_bytes(png_bytes(colour=(0, 0, 220)))
    messages = [
        {"role": "system", "content": "You are a pathologist."},
        user("What colour is this?", {"type": "image_url", "image_url": {"url": data_url(red.read_bytes())}}),
        {"role": "assistant", "content": "Red."},
        user("And this one, compared with the slide?",
             {"type": "image_url", "image_url": {"url": data_url(blue.read_bytes())}},
             {"type": "image", "image": {"path": "images/ihc_01.png"}}),
    ]
    response = chat(client, *messages)
    turns = [
        {"role": "system", "content": "You are a pathologist.", "media": []},
        {"role": "user", "content": "What colour is this?", "media": pipe.collect_media([red])},
        {"role": "assistant", "content": "Red.", "media": []},
        {"role": "user", "content": "And this one, compared with the slide?",
         "media": pipe.collect_media([blue, root / "images/ihc_01.png"])},
    ]
    expected, prompt = reference(pipe, turns, 12)
    assert response.usage.prompt_tokens == prompt
    assert response.choices[0].message.content == expected
    # The comparison can tell turns apart: the same media all in the last turn is another prompt.
    moved = [turns[0], {**turns[1], "media": []}, turns[2],
             {**turns[3], "media": turns[1]["media"] + turns[3]["media"]}]
    assert not torch.equal(pipe.inputs(moved)["input_ids"], pipe.inputs(turns)["input_ids"])


# -- refusals --------------------------------------------------------------------------------------
def _refused(client, part):
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, user("Read it.", part))
    return caught.value


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "../outside/secret.png"}},
    {"type": "image", "image": {"path": "../outside/secret.png"}},
    {"type": "volume", "volume": {"path": "../outside/secret.txt"}},
    {"type": "volume", "volume": {"path": "../outside/does-not-exist"}},
    {"type": "video", "video": {"path": "/etc/passwd"}},
    {"type": "image", "image": {"path": "escape.png"}},  # a symlink inside the root to a file outside
    {"type": "volume", "volume": {"path": "ct_trap"}},  # a series with one slice linking outside
    {"type": "volume", "volume": {"path": ["ct/series_01/slice_00.dcm", "../outside/secret.txt"]}},
], ids=["image-url", "image", "volume-file", "missing-outside", "absolute", "symlink", "folder-with-link", "file-list"])
def test_paths_outside_the_root_are_refused_without_leaking(client, root, part):
    error = _refused(client, part)
    assert error.status_code == 400
    assert error.body["code"] == "path_outside_root"
    # The same words whether the target exists or not, and nothing of it.
    assert error.body["message"] == "the path is outside the server's allowed root"
    text = error.response.text
    assert SECRET not in text and str(root.parent) not in text


def test_the_adapters_confine_what_they_open_to_the_root_too(client, root, monkeypatch):
    """A link the jail's walk did not see (one made after it) is still refused, by the adapter."""
    from longllava_sdk.serving.security import RootJail

    monkeypatch.setattr(RootJail, "_check_folder", lambda self, folder, param, redact: None)
    error = _refused(client, {"type": "volume", "volume": {"path": "ct_trap"}})
    assert error.body["code"] == "path_outside_root"
    assert error.body["message"] == "the path is outside the server's allowed root"
    assert SECRET not in error.response.text and str(root.parent) not in error.response.text


def test_a_path_under_the_root_that_does_not_exist_is_named_relative_to_the_root(client, root):
    error = _refused(client, {"type": "volume", "volume": {"path": "ct/series_99"}})
    assert error.body["code"] == "path_not_found"
    assert error.body["message"].startswith("ct/series_99: ") and str(root) not in error.response.text


def test_authentication(server, client):
    for bad in (server.client(None), server.client("wrong-key")):
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    # Unknown routes and every method need the key too: nothing is revealed without it.
    assert httpx.get(f"{server.url}/v1/nope").status_code == 401
    assert httpx.post(f"{server.url}/v1/chat/completions", json={}).status_code == 401
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert client.models.list().data


def test_remote_urls_are_refused_without_an_allowlist(client):
    error = _refused(client, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}})
    assert error.body["code"] == "remote_url_refused"
    error = _refused(client, {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}})
    assert error.body["code"] == "invalid_image_url"


# -- error bodies ----------------------------------------------------------------------------------
_INTERNALS = re.compile(r"Traceback|File \"|object at 0x|<class |<function |\bself\b|pydantic|starlette")


def _assert_clean(response: httpx.Response, root) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert not _INTERNALS.search(response.text), response.text
    assert str(root) not in response.text and str(root.parent) not in response.text
    return body["error"]


def test_error_bodies_are_openai_shaped_and_carry_no_internals(server, root, pipe, monkeypatch):
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "notes.dcm").write_text("not a dicom file")
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"{server.url}/v1/chat/completions"

    def post(body=None, **kwargs):
        return httpx.post(url, headers=auth, json=body, timeout=30, **kwargs)

    def message(*parts):
        return {"model": MODEL, "messages": [user("x", *parts)], "max_tokens": 4}

    cases = {
        "bad json": (httpx.post(url, headers=auth, content=b"{not json"), 400),
        "wrong model": (post({"model": "gpt-4o", "messages": [user("x")]}), 404),
        "unknown part": (post(message({"type": "input_audio", "input_audio": {}})), 400),
        "missing field": (post({"model": MODEL}), 400),
        "corrupt image": (post(message({"type": "image", "image": {"path": "broken.png"}})), 400),
        "not dicom": (post(message({"type": "volume", "volume": {"path": "notes.dcm", "adapter": "dicom"}})), 400),
        "unknown adapter": (post(message({"type": "video", "video": {"path": "clips/bikes_1.mp4",
                                                                     "adapter": "nope"}})), 400),
        "unsupported": (post({**message(), "n": 3}), 400),
        "media in an assistant turn": (post({"model": MODEL, "messages": [
            {"role": "assistant", "content": [{"type": "image", "image": {"path": "images/ihc_01.png"}}]}]}), 400),
        "too many tokens": (post({**message(), "max_tokens": 10 ** 6}), 400),
        "no route": (httpx.get(f"{server.url}/v2/x", headers=auth), 404),
        "wrong method": (httpx.get(url, headers=auth), 405),
        "no head": (httpx.post(f"{server.url}/v1/classify", headers=auth, json=message()), 404),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        error = _assert_clean(response, root)
        assert error["message"], name
    (root / "table.csv").write_text("a,b\n1,2\n")
    nobody = post(message({"type": "volume", "volume": {"path": "table.csv"}}))
    # SDK advice is phrased as a request field, not a Python keyword or a CLI flag.
    assert '"adapter": "NAME"' in _assert_clean(nobody, root)["message"]
    not_dicom = cases["not dicom"][0].json()["error"]["message"]
    assert not_dicom.startswith("notes.dcm: ")  # named relative to the root
    assert "unsupported_source" == cases["unknown adapter"][0].json()["error"]["code"]

    # An unexpected failure inside the model: a generic 500, the details only in the server log.
    def explode(*args, **kwargs):
        raise RuntimeError(f"internal state {object()} at {root}")

    monkeypatch.setattr(pipe.model, "generate", explode)
    response = post(message())
    assert response.status_code == 500
    assert _assert_clean(response, root)["code"] == "internal_error"


def test_a_model_with_a_task_head_classifies_over_http(tiny_model_and_processor, tmp_path, root):
    from longllava_sdk.model_folders import save_model
    from longllava_sdk.registry import get_head_class

    model, processor = tiny_model_and_processor
    head = get_head_class("classify")(model.config.text_config.hidden_size, ["benign", "malignant"], dropout=0.0)
    with torch.no_grad():
        head.classifier.weight.normal_()
    folder = save_model(model, processor, tmp_path / "with-head", head=head)
    pipe = Pipeline.from_pretrained(folder)
    with running_server(create_app(pipe, ServerSettings(model_name=MODEL, root=root))) as server:
        body = {"model": MODEL, "messages": [user("Benign or malignant?", {"type": "image",
                                                                          "image": {"path": "images/ihc_01.png"}})]}
        response = httpx.post(f"{server.url}/v1/classify", json=body, timeout=30)
        two_turns = httpx.post(f"{server.url}/v1/classify", timeout=30,
                               json={**body, "messages": body["messages"] * 2})
        assert server.client().models.retrieve(MODEL).model_extra["task_head"] is True
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "classification" and answer["model"] == MODEL
    expected = pipe.classify("Benign or malignant?", images=[root / "images/ihc_01.png"])
    assert answer["result"]["labels"] == expected["labels"]
    assert answer["result"]["scores"] == pytest.approx(expected["scores"])
    assert two_turns.status_code == 400 and two_turns.json()["error"]["param"] == "messages"


def test_serve_quantize_int8_serves_the_int8_model(tiny_checkpoint, root, monkeypatch):
    """``serve --quantize int8`` loads the model in int8 and the server answers like that pipeline."""
    import uvicorn

    from longllava_sdk.serving import serve

    served = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kwargs: served.update(app=self.config.app,
                                                                                  host=self.config.host))
    serve(str(tiny_checkpoint), root=str(root), model_name=MODEL, quantize="int8", port=0)
    monkeypatch.undo()
    assert served["host"] == "127.0.0.1"
    int8 = Pipeline.from_pretrained(tiny_checkpoint, quantize="int8")
    with running_server(served["app"]) as server:
        wait_ready(server.url)  # serve() loads the model once the server listens
        pipeline = served["app"].state.server.pipeline
        assert pipeline.model.config.quantization["mode"] == "int8"
        answer = chat(server.client(), user("Describe.", {"type": "image", "image": {"path": "images/ihc_01.png"}}))
    expected = int8("Describe.", images=[root / "images/ihc_01.png"], max_new_tokens=12)
    assert answer.choices[0].message.content == expected
