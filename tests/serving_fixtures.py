"""Helpers for the serving tests: a real uvicorn server on an ephemeral loopback port, sample files.

Every server binds 127.0.0.1 only; every request the tests send goes there.
"""

from __future__ import annotations

import base64
import io
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

DOMAINS = Path(__file__).resolve().parents[1] / "domains"
SECRET = "TOP-SECRET-CONTENT-7f3a"


@dataclass
class RunningServer:
    app: Any
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> Any:
        return self.app.state.server.engine

    def client(self, api_key: str | None = "test-key", **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=0,
                             timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.engine.active and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.engine.active


@contextmanager
def running_server(app: Any) -> Iterator[RunningServer]:
    """``app`` served by uvicorn in a thread on 127.0.0.1:<free port>, with the connection limits
    ``serve`` sets (:func:`~longllava_sdk.serving.connections.uvicorn_options`); stopped on exit."""
    import uvicorn

    from longllava_sdk.serving.connections import uvicorn_options

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           **uvicorn_options(app.state.server.settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(app, sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def wait_ready(url: str, timeout: float = 120.0) -> dict[str, Any]:
    """Poll ``GET url/health`` until it says ``ready``; returns that body."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/health")
        if response.json()["status"] == "ready":
            assert response.status_code == 200
            return response.json()
        assert response.status_code == 503 and response.json()["status"] == "loading", response.text
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} still loading after {timeout} s")
        time.sleep(0.1)


def make_root(base: Path) -> Path:
    """A server root with real sample files (copies), plus traps pointing outside it.

    ``root/``: ``images/ihc_01.png``, ``ct/series_01/`` (4 DICOM slices), ``mri/anatomical.nii``,
    ``clips/bikes_1.mp4``, ``scenes/rmnp_01.tif``; ``escape.png`` (a symlink to a file outside),
    ``ct_trap/`` (a series with one slice a symlink to a file outside).
    ``base/outside/``: ``secret.txt`` and ``secret.png`` holding :data:`SECRET`.
    """
    root = base / "root"
    outside = base / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_text(SECRET)
    shutil.copy(DOMAINS / "medical/data/pathology/ihc_01.png", outside / "secret.png")
    (root / "images").mkdir(parents=True)
    shutil.copy(DOMAINS / "medical/data/pathology/ihc_01.png", root / "images/ihc_01.png")
    shutil.copytree(DOMAINS / "medical/data/ct/series_01", root / "ct/series_01")
    (root / "mri").mkdir()
    shutil.copy(DOMAINS / "medical/data/mri/anatomical.nii", root / "mri/anatomical.nii")
    (root / "clips").mkdir()
    shutil.copy(DOMAINS / "video/data/clips/bikes_1.mp4", root / "clips/bikes_1.mp4")
    (root / "scenes").mkdir()
    shutil.copy(DOMAINS / "remote_sensing/data/scenes/rmnp_01.tif", root / "scenes/rmnp_01.tif")
    (root / "escape.png").symlink_to(outside / "secret.png")
    shutil.copytree(DOMAINS / "medical/data/ct/series_02", root / "ct_trap")
    (root / "ct_trap/slice_99.dcm").symlink_to(outside / "secret.txt")
    return root


def png_bytes(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 20, 20)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def user(*parts: dict[str, Any] | str) -> dict[str, Any]:
    """A user message from text and parts."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"role": "user", "content": content}
