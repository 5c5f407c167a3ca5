"""``serve`` says when it can answer, and returns what the adapters warned about (docs/serving.md).

* the server listens while the model loads: ``/health`` answers ``loading`` (503), other
  routes 503 ``model_loading``; then ``ready`` (200) and one log line
  ``ready: http://HOST:PORT (model NAME, N parameters)``;
* ``longllava-sdk serve`` prints that line, with the port it really bound;
* a chat completion (and its stream's last chunk, and a classification) carries
  ``"longllava": {"media_warnings": [...]}``: the bundled real CT series with a slice dropped
  comes back with its spacing warning, paths as the client named them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from longllava_sdk import Pipeline
from longllava_sdk.serving import ServerSettings, create_app
from serving_fixtures import running_server, user, wait_ready

MODEL = "tiny"
CT_SERIES = Path(__file__).resolve().parents[1] / "domains" / "medical" / "data" / "ct" / "series_01"
READY = re.compile(r"ready: (http://127\.0\.0\.1:(\d+)) \(model (\S+), ([\d,]+) parameters\)")


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint, device="cpu")


@pytest.fixture
def serving_log():
    """INFO records of the ``longllava_sdk.serving`` logger (whatever the CLI did to its parents)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("longllava_sdk.serving")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_health_says_loading_then_ready_and_the_ready_line_is_logged(pipe, serving_log):
    release = threading.Event()
    where: dict[str, str] = {}

    def load() -> Pipeline:
        release.wait(60)
        return pipe

    app = create_app(None, ServerSettings(model_name=MODEL), load=load, address=lambda: where.get("url"))
    with running_server(app) as server:
        where["url"] = server.url
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        models = httpx.get(f"{server.url}/v1/models")
        assert models.status_code == 503 and models.json()["error"]["code"] == "model_loading"
        assert models.headers["retry-after"] == "5"
        assert not [r for r in serving_log if r.getMessage().startswith("ready:")]
        release.set()
        assert wait_ready(server.url) == {"status": "ready"}
        deadline = time.monotonic() + 10
        while not [r for r in serving_log if r.getMessage().startswith("ready:")] and time.monotonic() < deadline:
            time.sleep(0.02)
        (line,) = [r.getMessage() for r in serving_log if r.getMessage().startswith("ready:")]
        match = READY.fullmatch(line)
        assert match and match.group(1) == server.url and match.group(3) == MODEL, line
        assert int(match.group(4).replace(",", "")) == sum(p.numel() for p in pipe.model.parameters())
        assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == MODEL


def test_a_failed_load_says_failed(pipe):
    failures: list[BaseException] = []

    def load() -> Pipeline:
        raise OSError("disk gone")

    app = create_app(None, ServerSettings(model_name=MODEL), load=load, on_load_error=failures.append)
    with running_server(app) as server:
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.02)
        health = httpx.get(f"{server.url}/health")
    assert isinstance(failures[0], OSError) and app.state.server.load_error is failures[0]
    assert health.status_code == 503 and health.json() == {"status": "failed"}


def test_serve_command_logs_ready_with_the_bound_port(tiny_checkpoint, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "longllava_sdk", "serve", str(tiny_checkpoint), "--port", "0",
                                "--model-name", MODEL, "--device", "cpu"], stderr=subprocess.PIPE, text=True,
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if READY.search(line):
                break
        match = next((READY.search(line) for line in lines if READY.search(line)), None)
        assert match, "\n".join(lines)
        assert f"ready: {match.group(1)}" in lines[-1] and int(match.group(2)) > 0
        assert httpx.get(f"{match.group(1)}/health").json() == {"status": "ready"}  # answers as soon as it says so
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- media warnings ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gappy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(CT_SERIES, root / "ct_gap")
    (root / "ct_gap" / "slice_01.dcm").unlink()
    shutil.copytree(CT_SERIES, root / "ct")
    return root


def test_chat_responses_carry_the_adapters_warnings(pipe, gappy_root):
    app = create_app(pipe, ServerSettings(model_name=MODEL, root=gappy_root))
    part = {"type": "volume", "volume": {"path": "ct_gap"}}
    body = {"model": MODEL, "messages": [user("Any nodule?", part)], "max_tokens": 2, "temperature": 0}
    with running_server(app) as server:
        client = server.client(None)
        answer = client.chat.completions.create(**body)
        warnings = answer.model_extra["longllava"]["media_warnings"]
        assert len(warnings) == 1 and warnings[0].startswith("ct_gap: irregular spacing"), warnings
        assert str(gappy_root) not in warnings[0]  # the server's paths stay private
        chunks = list(client.chat.completions.create(**body, stream=True))
        assert chunks[-1].model_extra["longllava"]["media_warnings"] == warnings
        clean = client.chat.completions.create(**{**body, "messages": [user("Any nodule?", {
            "type": "volume", "volume": {"path": "ct"}})]})
        assert clean.model_extra["longllava"] == {"media_warnings": []}
        raw = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120).json()
        assert json.dumps(raw["longllava"]) == json.dumps({"media_warnings": warnings})
