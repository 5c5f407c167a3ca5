"""Limits of the server: queue and 429, disconnects cancelling generation, caps, timeouts, the CLI.

Long generations use the ``min_tokens`` extension so the random-weight model cannot end early;
"stopped early" is read from the engine's record of generated steps.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import openai
import pytest

from longllava_sdk import Pipeline
from longllava_sdk.errors import ConfigError
from longllava_sdk.serving import ServerSettings, create_app
from serving_fixtures import data_url, make_root, png_bytes, running_server, user

MODEL = "tiny"
LONG = {"max_tokens": 3000, "extra_body": {"min_tokens": 3000}}  # ~10 s of generation: never reached


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("serve-limits"))
    from PIL import Image

    Image.new("RGB", (1400, 700), (30, 120, 60)).save(root / "images/wide.png")
    return root


def serving(pipe, **settings):
    return running_server(create_app(pipe, ServerSettings(model_name=MODEL, **settings)))


def _stream_until_first_piece(server, started: threading.Event, done: threading.Event, received: list) -> None:
    """A streaming client that reads until its first content piece, then waits, then goes away."""
    stream = server.client().chat.completions.create(model=MODEL, messages=[user("Go on.")], stream=True, **LONG)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
            started.set()
            break
    done.wait(30)
    stream.close()  # the client disconnects mid-answer


def test_a_full_queue_answers_429_at_once_and_a_streaming_disconnect_cancels(pipe):
    with serving(pipe, max_concurrent=1, max_queue=0) as server:
        started, done, received = threading.Event(), threading.Event(), []
        reader = threading.Thread(target=_stream_until_first_piece, args=(server, started, done, received))
        reader.start()
        assert started.wait(30)
        with pytest.raises(openai.RateLimitError) as caught:
            server.client().chat.completions.create(model=MODEL, messages=[user("Me too.")], max_tokens=4)
        # refused at once, not after waiting for the worker: the first request still holds the slot
        assert server.engine.active == 1 and not done.is_set()
        assert caught.value.status_code == 429 and caught.value.body["code"] == "server_busy"
        assert caught.value.response.headers["retry-after"] == "1"
        done.set()
        reader.join(30)
        assert server.wait_idle(10), "the cancelled generation kept its place"
        record = server.engine.records[-1]
        assert record.outcome == "cancelled" and 0 < record.steps < 3000
        # The place is free again.
        answer = server.client().chat.completions.create(model=MODEL, messages=[user("Now?")], max_tokens=4)
        assert answer.choices[0].finish_reason in ("stop", "length")


def test_the_queue_holds_max_queue_requests_then_refuses(pipe):
    with serving(pipe, max_concurrent=1, max_queue=1, request_timeout=60) as server:
        started, done, received = threading.Event(), threading.Event(), []
        first = threading.Thread(target=_stream_until_first_piece, args=(server, started, done, received))
        first.start()
        assert started.wait(30)
        # A queued request whose client leaves gives its place back without ever running.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", timeout=httpx.Timeout(10, read=1.0),
                       json={"model": MODEL, "messages": [user("Leaving.")], "max_tokens": 4})
        deadline = time.monotonic() + 5
        while server.engine.active > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.engine.active == 1
        assert server.engine.records[-1].outcome == "cancelled" and server.engine.records[-1].steps == 0
        results: list = []
        queued = threading.Thread(target=lambda: results.append(server.client().chat.completions.create(
            model=MODEL, messages=[user("Queued.")], max_tokens=4)))
        queued.start()
        deadline = time.monotonic() + 10
        while server.engine.active < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.engine.active == 2
        with pytest.raises(openai.RateLimitError):
            server.client().chat.completions.create(model=MODEL, messages=[user("Third.")], max_tokens=4)
        done.set()  # the first client leaves: the queued request runs and completes
        first.join(30)
        queued.join(30)
        assert results and results[0].choices[0].message.content is not None
        assert server.wait_idle(10)


def test_a_non_streaming_client_that_disconnects_cancels_its_generation(pipe):
    with serving(pipe) as server:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(f"{server.url}/v1/chat/completions", timeout=httpx.Timeout(10, read=1.0),
                       json={"model": MODEL, "messages": [user("Go on.")], "max_tokens": 3000, "min_tokens": 3000})
        assert server.wait_idle(10)
        record = server.engine.records[-1]
        assert record.outcome == "cancelled" and 0 < record.steps < 3000  # stopped long before its 3000 tokens


def test_request_timeout_ends_a_long_generation_with_504(pipe):
    with serving(pipe, request_timeout=1.0) as server:
        with pytest.raises(openai.APIStatusError) as caught:
            server.client().chat.completions.create(model=MODEL, messages=[user("Go on.")], **LONG)
        assert caught.value.status_code == 504 and caught.value.body["code"] == "timeout"
        assert server.wait_idle(10)
        assert server.engine.records[-1].outcome == "timeout" and server.engine.records[-1].steps < 3000
        # Streaming: the status line is sent already, so the error arrives as an event.
        stream = server.client().chat.completions.create(model=MODEL, messages=[user("Go on.")], stream=True, **LONG)
        with pytest.raises(openai.APIError, match="limit of 1 s"):
            for _ in stream:
                pass


def test_body_and_image_size_caps(pipe):
    noise = os.urandom(150_000)  # a large body that compresses nowhere
    with serving(pipe, max_body_mb=0.1) as server:
        with pytest.raises(openai.APIStatusError) as caught:
            server.client().chat.completions.create(model=MODEL, messages=[user(noise.hex()[:200_000])], max_tokens=2)
        assert caught.value.status_code == 413 and caught.value.body["code"] == "request_too_large"
    from PIL import Image
    import io

    big = io.BytesIO()
    Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3)).save(big, "PNG")  # ~270 KB, incompressible
    with serving(pipe, max_image_mb=0.1) as server:
        with pytest.raises(openai.APIStatusError) as caught:
            server.client().chat.completions.create(
                model=MODEL,
                messages=[user("x", {"type": "image_url", "image_url": {"url": data_url(big.getvalue())}})],
                max_tokens=2)
        assert caught.value.status_code == 413 and caught.value.body["code"] == "image_too_large"


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` but that carries one row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_pixel_cap_is_checked_from_the_header_before_decoding(pipe, root):
    with serving(pipe, root=root, max_image_pixels=4000) as server:
        client = server.client()
        # the 60000 x 60000 PNG carries one row of data: decoding it would fail as truncated, so
        # "image_too_large" shows the header was checked first (3.6 gigapixels never decoded)
        for url in (data_url(_png_declaring(60_000, 60_000)), data_url(png_bytes((100, 100)))):
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model=MODEL, messages=[user("x", {"type": "image_url",
                                                                                "image_url": {"url": url}})],
                                               max_tokens=2)
            assert caught.value.body["code"] == "image_too_large"
        assert "4000" in caught.value.body["message"]
        for path in ("images/wide.png", "images"):  # the same check for server-side files and folders
            with pytest.raises(openai.BadRequestError) as caught:
                client.chat.completions.create(model=MODEL, messages=[user("x", {"type": "image", "image": {
                    "path": path}})], max_tokens=2)
            assert caught.value.body["code"] == "image_too_large"
            assert re.match(r"images/\w+\.png: declares \d+x\d+ = \d+ pixels", caught.value.body["message"])
        small = client.chat.completions.create(model=MODEL, max_tokens=2, messages=[
            user("x", {"type": "image_url", "image_url": {"url": data_url(png_bytes((50, 40)))}})])
        assert small.choices


def test_images_per_request_cap_counts_frames_slices_and_tiles(pipe, root):
    with serving(pipe, root=root, max_images=3) as server:
        client = server.client()
        part = {"type": "image_url", "image_url": {"url": data_url(png_bytes())}}
        with pytest.raises(openai.BadRequestError) as caught:  # four parts: refused before queuing
            client.chat.completions.create(model=MODEL, messages=[user("x", part, part, part, part)], max_tokens=2)
        assert caught.value.body["code"] == "too_many_images"
        # A high-resolution image takes the whole budget in tiles: the next part has none left.
        wide = {"type": "image", "image": {"path": "images/wide.png", "high_res": True}}
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=[user("x", wide, part)], max_tokens=2)
        assert caught.value.body["code"] == "too_many_images"
        # A video is sampled down to what is left of the budget (3 frames), not refused.
        video = {"type": "video", "video": {"path": "clips/bikes_1.mp4"}}
        answer = client.chat.completions.create(model=MODEL, messages=[user("x", video)], max_tokens=2)
        tags = 8  # protocol tokens around each image are few; 3 frames x 144 placeholders dominate
        assert 3 * 144 <= answer.usage.prompt_tokens < 4 * 144 + tags * 4


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="root"):
        ServerSettings(root="/definitely/not/a/folder")
    with pytest.raises(ConfigError, match="max_queue"):
        ServerSettings(max_queue=-1)
    with pytest.raises(ConfigError, match="default_max_tokens"):
        ServerSettings(max_tokens=10, default_max_tokens=20)


def test_the_cli_command_serves_until_interrupted(tiny_checkpoint, tmp_path):
    """``longllava-sdk serve`` end to end: a subprocess on a loopback port, the key from the environment."""
    import signal
    import socket

    with socket.socket() as probe:  # a free loopback port for the subprocess
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LONGLLAVA_API_KEY": "env-key", "OMP_WAIT_POLICY": "PASSIVE"}
    command = [sys.executable, "-m", "longllava_sdk", "serve", str(tiny_checkpoint), "--port", str(port),
               "--model-name", MODEL, "--no-access-log"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                pytest.fail(f"the server exited: {process.stderr.read()}")
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="env-key", max_retries=0)
        answer = client.chat.completions.create(model=MODEL, messages=[user("Hello?")], max_tokens=3)
        assert answer.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="other", max_retries=0).models.list()
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in err  # uvicorn says where it listens
    assert "Traceback" not in err and "Warning" not in err, err
