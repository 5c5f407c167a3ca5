"""Requests are bounded by cost, not by count, and none can wedge the server (issue 15).

Every hostile request of the issue's table ends in a typed answer within seconds, and a plain
request right after it is answered: admission by planned memory (413 / 429), decoding in
killable worker processes (422 ``decode_*``), the prompt's size in bytes before tokenising,
path errors as 400, one deadline per remote fetch, a deadline for request heads and a cap on
connections. Memory figures are in ``bench --suite serve``, never asserted here.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch

from longllava_sdk import Pipeline
from longllava_sdk.errors import AdapterError, ConfigError, DecodeLimitError, InputError
from longllava_sdk.isolation import DecodeLimits, run_isolated
from longllava_sdk.serving import ServerSettings, create_app
from serving_fixtures import DOMAINS, data_url, make_root, png_bytes, running_server, user

MODEL = "tiny"
LONG = {"max_tokens": 3000, "min_tokens": 3000}  # far longer than any test waits


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return Pipeline.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("serve-costs"))
    fifo_series = root / "ct/fifo_series"
    fifo_series.mkdir(parents=True)
    for name in sorted(os.listdir(root / "ct/series_01"))[:2]:
        (fifo_series / name).write_bytes((root / "ct/series_01" / name).read_bytes())
    os.mkfifo(fifo_series / "slice_fifo.dcm")
    from PIL import Image

    Image.new("RGB", (1400, 700), (30, 120, 60)).save(root / "images/wide.png")
    (root / "clips/tracks.mp4").write_bytes(_repeat_track(Path(DOMAINS / "video/data/clips/bikes_1.mp4").read_bytes(),
                                                          990))
    return root


def serving(pipe, **settings):
    return running_server(create_app(pipe, ServerSettings(model_name=MODEL, **settings)))


def post(server, *parts, client=None, timeout=60, **body):
    payload = {"model": MODEL, "max_tokens": 2, "messages": [user(*parts)], **body}
    # JSON with \u escapes: a lone surrogate travels as the six characters a client would send.
    return (client or httpx).post(f"{server.url}/v1/chat/completions", content=json.dumps(payload).encode(),
                                  headers={"Content-Type": "application/json"}, timeout=timeout)


def plain_request_works(server, client=None) -> None:
    response = post(server, "Hello?", client=client)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def _png(size, colour=(120, 60, 200)) -> bytes:
    """A PNG of ``size`` whose pixels do not compress past the adapters' bomb check: noise
    drawn at 1/8 of the size, enlarged (a 6000 x 6000 one is ~2 MB)."""
    import numpy as np
    from PIL import Image

    small = (max(1, size[0] // 8), max(1, size[1] // 8))
    noise = np.random.default_rng(0).integers(0, 256, (small[1], small[0], 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize(size, Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _repeat_track(mp4: bytes, times: int) -> bytes:
    """``mp4`` with the first track box of its ``moov`` repeated ``times`` more times (FFmpeg's
    open grows quadratically with the tracks: 990 take 1.3 s on the project's machine when it
    is quiet, 16 s under load; 1000 or more are refused at once)."""
    def boxes(start: int, end: int):
        at = start
        while at + 8 <= end:
            size, kind = struct.unpack(">I4s", mp4[at:at + 8])
            if size < 8:
                return
            yield at, size, kind
            at += size

    for at, size, kind in boxes(0, len(mp4)):
        if kind == b"moov":
            track_at, track_size = next((a, s) for a, s, k in boxes(at + 8, at + size) if k == b"trak")
            body = mp4[at + 8:at + size] + mp4[track_at:track_at + track_size] * times
            return mp4[:at] + struct.pack(">I4s", 8 + len(body), b"moov") + body + mp4[at + size:]
    raise AssertionError("no moov box")


# -- admission by planned memory ------------------------------------------------------------------
def test_a_request_planned_over_the_memory_budget_is_413_with_its_cost_and_the_limit(pipe):
    many = [{"type": "image_url", "image_url": {"url": data_url(png_bytes())}} for _ in range(48)]
    with serving(pipe, max_request_memory="40MiB") as server:
        started = time.monotonic()
        response = post(server, "Compare them.", *many)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_costly"
        assert error["planned_memory_bytes"] > error["memory_limit_bytes"] == 40 * 2**20
        assert "MiB" in error["message"]
        assert time.monotonic() - started < 30  # refused from the plan: nothing was decoded
        assert not server.engine.records  # it never took a place
        plain_request_works(server)


def test_memory_held_by_requests_in_flight_answers_429_at_once(pipe):
    app = create_app(pipe, ServerSettings(model_name=MODEL, max_queue=4))
    server_state = app.state.server
    from longllava_sdk.serving.content import Conversation, MediaItem, Turn

    def planned(images: int, max_tokens: int) -> int:
        media = [MediaItem(kind="images", param="p", name="x", data=b"x", files=1) for _ in range(images)]
        return server_state.plan_memory(Conversation([Turn("user", "Go on.", media)]), max_tokens)

    long_cost = planned(0, LONG["max_tokens"])
    image_cost = planned(8, 2)
    # Room for the long request, not for both.
    server_state.engine.memory_budget = long_cost + image_cost - 1
    images = [{"type": "image_url", "image_url": {"url": data_url(png_bytes())}} for _ in range(8)]
    with running_server(app) as server:
        client = server.client()
        stream = client.chat.completions.create(model=MODEL, messages=[user("Go on.")], stream=True,
                                                max_tokens=LONG["max_tokens"],
                                                extra_body={"min_tokens": LONG["min_tokens"]})
        next(iter(stream))
        response = post(server, "Compare.", *images)
        assert response.status_code == 429, response.text
        error = response.json()["error"]
        assert error["code"] == "server_busy" and response.headers["retry-after"] == "1"
        assert error["memory_in_use_bytes"] >= long_cost
        stream.close()
        assert server.wait_idle(60)
        assert server.engine.reserved == 0  # every byte given back
        assert post(server, "Compare.", *images).status_code == 200


def test_a_full_server_answers_429_before_reading_the_body(pipe):
    with serving(pipe, max_queue=0) as server:
        client = server.client()
        stream = client.chat.completions.create(model=MODEL, messages=[user("Go on.")], stream=True,
                                                max_tokens=LONG["max_tokens"],
                                                extra_body={"min_tokens": LONG["min_tokens"]})
        next(iter(stream))
        # Headers promising a 10 MB body that never comes: the answer cannot wait for it.
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 10000000\r\n\r\n{")
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 429"), head[:200]
        stream.close()
        assert server.wait_idle(60)


# -- decoding in worker processes -----------------------------------------------------------------
def test_sandboxed_decoding_gives_the_model_the_same_pixels(pipe, root):
    isolated = pipe.isolated(DecodeLimits(timeout_s=120))
    for media in ({"images": [root / "images/ihc_01.png", root / "images/wide.png"]},
                  {"video": root / "clips/bikes_1.mp4", "max_images": 4},
                  {"volume": root / "ct/series_01"}):
        images = media.pop("images", None)
        here = pipe.collect_media(images, **media)
        there = isolated.collect_media(images, **media)
        a = pipe._inputs([{"role": "user", "content": "x", "media": here}], lazy_pixels=False)
        b = pipe._inputs([{"role": "user", "content": "x", "media": there}], lazy_pixels=False)
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert all(image.size == (336, 336) for item in there for image in item.images)


def test_a_large_image_is_decoded_under_the_workers_memory_limit(pipe):
    """A 6000 x 6000 PNG (108 MB of RGB, ~0.3 MB of file) cannot be decoded in 64 MiB: the
    worker fails, not the server; the same image decodes with the default limit."""
    big = data_url(_png((6000, 6000)))
    part = {"type": "image_url", "image_url": {"url": big}}
    with serving(pipe, decode_memory_mb=64) as server:
        response = post(server, "What is it?", part)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "decode_memory"
        plain_request_works(server)
    with serving(pipe) as server:
        assert post(server, "What is it?", part, part).status_code == 200


def test_an_extreme_aspect_ratio_png_ends_bounded(pipe):
    """The 1.3 KB PNG of 20000 x 20 pixels: a bounded success, or a typed refusal from its worker."""
    part = {"type": "image_url", "image_url": {"url": data_url(_png((20000, 20)))}}
    with serving(pipe, decode_memory_mb=512, decode_timeout=60) as server:
        response = post(server, "What is it?", part)
        assert response.status_code in (200, 422), response.text
        if response.status_code == 422:
            assert response.json()["error"]["code"] in ("decode_memory", "decode_timeout")
        plain_request_works(server)


def test_a_decoder_that_runs_past_its_budget_is_killed_and_the_slot_returned(pipe, root):
    """A decode that outlives --decode-timeout (here: sampling a real clip in 20 ms, which takes
    well over 100 ms) has its worker killed: 422, and the generation slot is back at once."""
    with serving(pipe, root=root, decode_timeout=0.02, max_queue=0) as server:
        started = time.monotonic()
        response = post(server, "What happens?", {"type": "video", "video": {"path": "clips/bikes_1.mp4"}})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "decode_timeout"
        assert time.monotonic() - started < 30
        assert server.wait_idle(10)  # the generation slot is back
        plain_request_works(server)


def test_an_mp4_with_a_repeated_track_box_ends_typed_within_seconds(pipe, root):
    """The MP4 whose track box is repeated 990 times (FFmpeg's open grows quadratically with the
    tracks): refused before FFmpeg parses it, or killed at its decode budget."""
    with serving(pipe, root=root, decode_timeout=5) as server:
        started = time.monotonic()
        response = post(server, "What happens?", {"type": "video", "video": {"path": "clips/tracks.mp4"}})
        assert response.status_code in (400, 422), response.text
        assert response.json()["error"]["code"] in ("unreadable_source", "decode_timeout")
        assert time.monotonic() - started < 30
        plain_request_works(server)


def test_a_folder_holding_a_fifo_is_refused_at_once(pipe, root):
    with serving(pipe, root=root) as server:
        started = time.monotonic()
        response = post(server, "Any nodule?", {"type": "volume", "volume": {"path": "ct/fifo_series"}}, timeout=30)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_path" and "FIFO" in error["message"] and "slice_fifo.dcm" in error["message"]
        assert time.monotonic() - started < 20
        plain_request_works(server)


def test_run_isolated_returns_results_and_rebuilds_typed_errors():
    limits = DecodeLimits(timeout_s=60)
    assert run_isolated(os.path.basename, "/a/b.png", limits=limits) == "b.png"
    with pytest.raises(InputError) as caught:
        run_isolated(_raise_input_error, limits=limits)
    assert caught.value.path == "scan.dcm" and caught.value.problem == "truncated"
    with pytest.raises(DecodeLimitError) as slow:
        run_isolated(time.sleep, 30, limits=DecodeLimits(timeout_s=1), source="slow.mp4")
    assert slow.value.limit == "timeout" and slow.value.path == "slow.mp4"
    with pytest.raises(DecodeLimitError) as big:
        run_isolated(bytearray, 1 << 30, limits=DecodeLimits(timeout_s=60, memory_mb=64), source="big.png")
    assert big.value.limit == "memory" and "64 MiB" in str(big.value)
    with pytest.raises(ConfigError):
        DecodeLimits(timeout_s=0)


def _raise_input_error() -> None:
    raise InputError("scan.dcm", "truncated")


# -- server edges ---------------------------------------------------------------------------------
def test_a_30_mb_prompt_is_refused_in_bytes_before_tokenising(pipe):
    prompt = "lorem ipsum " * (30 * 2**20 // 12)
    with serving(pipe) as server:
        started = time.monotonic()
        response = post(server, prompt)
        assert response.status_code == 413, response.text[:300]
        error = response.json()["error"]
        assert error["code"] == "prompt_too_large" and error["prompt_bytes"] > error["limit_bytes"]
        assert time.monotonic() - started < 30  # 122 s when it was tokenised first
        plain_request_works(server)


@pytest.mark.parametrize("path", ["a" * 10_000, "images/" + "b" * 300 + ".png", "images/\udcff.png"])
def test_path_errors_are_400_and_keep_the_connection(pipe, root, path):
    with serving(pipe, root=root) as server, httpx.Client(timeout=60) as client:
        response = post(server, "What is it?", {"type": "image", "image": {"path": path}}, client=client)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] in ("invalid_path", "invalid_request")
        plain_request_works(server, client)  # on the same keep-alive connection


class _Trickle(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        body = png_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:  # one byte every 0.5 s: every read is quick, the whole is not
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up at its deadline, as it should

    def log_message(self, *args: object) -> None:
        pass


def test_a_remote_fetch_has_one_total_deadline(pipe):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/slow.png"
        with serving(pipe, allow_remote=("127.0.0.1",), remote_timeout=2) as server:
            started = time.monotonic()
            response = post(server, "What is it?", {"type": "image_url", "image_url": {"url": url}})
            elapsed = time.monotonic() - started
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "remote_fetch_failed"
            assert "timed out" in response.json()["error"]["message"]
            assert elapsed < 15  # the body alone takes ~2 minutes
            plain_request_works(server)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_connections_that_never_finish_their_headers_are_closed_and_capped(pipe):
    with serving(pipe, header_timeout=1, max_connections=24) as server:
        sockets = []
        for _ in range(40):  # more than the cap
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # never ends its head
            sockets.append(sock)
        deadline = time.monotonic() + 20
        closed = 0
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
            sock.close()
        assert closed == len(sockets)
        plain_request_works(server)


def test_training_data_can_decode_in_worker_processes(tmp_path):
    from longllava_sdk.training.data import MediaLoader, MediaSource

    root = DOMAINS / "medical/data"
    sources = [MediaSource("pathology/ihc_01.png", key="image"), MediaSource("ct/series_01", key="volume")]
    here, there = MediaLoader(root), MediaLoader(root, isolate_decoding=DecodeLimits(timeout_s=120))
    for source in sources:
        a, b = here.load(source), there.load(source)
        assert (a.kind, len(a.images), a.metadata) == (b.kind, len(b.images), b.metadata)
        assert [image.tobytes() for image in a.images] == [image.tobytes() for image in b.images]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(AdapterError) as caught:  # the worker's typed error, rebuilt here
        MediaLoader(tmp_path, isolate_decoding=True).load(MediaSource("broken.png", key="image"))
    assert caught.value.path.endswith("broken.png")
