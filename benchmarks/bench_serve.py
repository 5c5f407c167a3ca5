"""Benchmark: ``longllava-sdk serve`` under load, on the tiny model, over loopback.

Saves a tiny random-weight model in a temporary directory, starts ``longllava-sdk serve`` on
it as a subprocess bound to 127.0.0.1 (a free port, an API key), then sends ``--requests``
chat completions (default 200; short prompts, ``max_tokens`` 8, greedy) from ``--concurrency``
clients at once (default 16) with httpx, in three runs:

* ``queue 16``: the server's queue holds every client (``--max-queue 16``): every request
  must succeed;
* ``queue 4``: the default queue; clients do not retry: the overflow is answered 429 at once
  (the intended refusals), everything else must succeed;
* ``queue 4 + retry``: the default queue; clients retry a 429 after its ``Retry-After``:
  every request must end in success.

* ``load 64``: 64 clients at once against the default queue, no retry: how fast the overflow
  is refused under load (the 429 is answered before the request's body is read, never behind
  the generation; issue 15 measured a 1.58 s median before).

For each run: wall time, throughput (successful requests and generated tokens per second),
latency p50 / p90 / p99 of the successful requests (for the retry run, from the first attempt
to the answer), latency of the 429 answers, and counts of 200 / 429 / other answers (other =
any other status, a transport error or a timeout: a failed or lost request). Every answer to
the same prompt must be the same text (greedy decoding: answers crossing between concurrent
requests would show). Exit status 1 if any run has a failed or lost request or a mismatch.

The server subprocess runs with ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it.

Two more measurements follow (``--skip-decoding`` leaves them out):

* **sandboxed decoding**: the median latency of a request with one small data-URL PNG
  (64 x 48) against a server decoding in worker processes (the default) and one decoding in
  process (``--no-isolate-decoding``), 12 sequential requests each after a warm-up: the
  difference is the per-request cost of isolation (a fork, limits, the reduced image's trip
  back).
* **24 x 36-MP images**: the server's RSS (its process and its decoding workers, sampled
  every 50 ms) idle and at its peak while it answers one request with 24 data-URL PNGs of
  6000 x 6000 pixels (issue 15: ~380 MB per such image when they were decoded at once; the
  target is within ~2.5 GB of the idle server).

Run: ``python benchmarks/bench_serve.py`` or ``longllava-sdk bench --suite serve``
(``--json`` prints the rows as JSON). Traffic stays on 127.0.0.1; every request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Before torch loads OpenMP, here and in the server subprocess (which inherits it): spinning
# OpenMP threads on shared cores made each request ~20x slower on the 2-core CI machine
# (docs/serving.md, "Load").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402

API_KEY = "bench-key"
MODEL = "tiny"
PROMPTS = ["What is shown?", "Describe the scan.", "Is there a nodule?", "Summarise the clip."]
REQUEST_TIMEOUT = 120.0


@dataclass
class RunResult:
    name: str
    max_queue: int
    retry_429: bool
    requests: int
    concurrency: int
    wall_s: float = 0.0
    ok: int = 0
    refused_429: int = 0
    other: int = 0
    attempts: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    refusal_latencies: list[float] = field(default_factory=list, repr=False)
    mismatched_prompts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000, 1)

        row = {k: v for k, v in asdict(self).items() if k not in ("latencies", "refusal_latencies")}
        row.update(
            req_per_s=round(self.ok / self.wall_s, 2) if self.wall_s else None,
            tokens_per_s=round(self.tokens / self.wall_s, 1) if self.wall_s else None,
            p50_ms=pct(self.latencies, 0.5), p90_ms=pct(self.latencies, 0.9), p99_ms=pct(self.latencies, 0.99),
            refusal_p50_ms=pct(self.refusal_latencies, 0.5),
            refusal_max_ms=round(max(self.refusal_latencies) * 1000, 1) if self.refusal_latencies else None,
            mean_ms=round(statistics.fmean(self.latencies) * 1000, 1) if self.latencies else None,
        )
        row["errors"] = self.errors[:5]
        return row

    @property
    def failed(self) -> bool:
        lost = self.requests - self.ok - (0 if self.retry_429 else self.refused_429)
        return bool(self.other or lost or self.mismatched_prompts)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _make_model(folder: Path) -> Path:
    from longllava_sdk.model_folders import create_model, save_model

    model, processor = create_model("tiny", seed=0)
    return save_model(model, processor, folder / "tiny")


class ServerProcess:
    """``longllava-sdk serve`` in a subprocess on 127.0.0.1; stopped with SIGINT like Ctrl-C."""

    def __init__(self, model: Path, max_queue: int, extra: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        env = {**os.environ, "LONGLLAVA_API_KEY": API_KEY}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "longllava_sdk", "serve", str(model), "--port", str(self.port),
             "--model-name", MODEL, "--max-queue", str(max_queue), "--no-access-log", "--log-level", "warning",
             *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stderr.read() if self.process.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start within 180 s")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err or ""


async def _one(client: httpx.AsyncClient, index: int, run: RunResult, answers: dict[str, set[str]],
               max_tokens: int) -> None:
    prompt = PROMPTS[index % len(PROMPTS)]
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    began = time.perf_counter()
    while True:
        run.attempts += 1
        attempt = time.perf_counter()
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            run.other += 1
            run.errors.append(f"{type(exc).__name__}")
            return
        if response.status_code == 429:
            run.refusal_latencies.append(time.perf_counter() - attempt)
            if run.retry_429:
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                continue
            run.refused_429 += 1
            return
        if response.status_code != 200:
            run.other += 1
            run.errors.append(f"HTTP {response.status_code}: {response.text[:120]}")
            return
        data = response.json()
        run.ok += 1
        run.tokens += data["usage"]["completion_tokens"]
        run.latencies.append(time.perf_counter() - began)
        answers.setdefault(prompt, set()).add(data["choices"][0]["message"]["content"])
        return


async def _load(url: str, run: RunResult, max_tokens: int) -> None:
    answers: dict[str, set[str]] = {}
    limits = httpx.Limits(max_connections=run.concurrency, max_keepalive_connections=run.concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, limits=limits,
                                 timeout=REQUEST_TIMEOUT) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(run.requests):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                await _one(client, queue.get_nowait(), run, answers, max_tokens)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(run.concurrency)))
        run.wall_s = round(time.perf_counter() - began, 2)
    run.mismatched_prompts = [prompt for prompt, texts in answers.items() if len(texts) > 1]


def run(requests: int = 200, concurrency: int = 16, max_tokens: int = 8) -> list[dict[str, Any]]:
    plans = [("queue 16", concurrency, False, requests, concurrency), ("queue 4", 4, False, requests, concurrency),
             ("queue 4 + retry", 4, True, requests, concurrency), ("load 64", 4, False, 128, 64)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model = _make_model(Path(tmp))
        for name, max_queue, retry, n_requests, n_clients in plans:
            server = ServerProcess(model, max_queue)
            result = RunResult(name, max_queue, retry, n_requests, n_clients)
            try:
                asyncio.run(_load(server.url, result, max_tokens))
            finally:
                log = server.stop()
            if "Traceback" in log:
                result.errors.append("server log has a traceback")
                result.other += 1
            rows.append(result.summary() | {"failed": result.failed})
    return rows


def _png(size: tuple[int, int]) -> bytes:
    """Noise drawn at 1/8 of ``size`` and enlarged: decodes to the full size, compresses ~40:1."""
    import io

    import numpy as np
    from PIL import Image

    small = (max(1, size[0] // 8), max(1, size[1] // 8))
    noise = np.random.default_rng(0).integers(0, 256, (small[1], small[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).resize(size, Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def _image_request(images: list[bytes]) -> dict[str, Any]:
    import base64

    parts: list[dict[str, Any]] = [{"type": "text", "text": "Compare them."}]
    parts += [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b).decode()}}
              for b in images]
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 2, "temperature": 0}


def _tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants (the decoding workers, their fork server)."""
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def sandbox_overhead(model: Path, repeats: int = 12) -> dict[str, Any]:
    """Median latency of a one-small-image request, decoding isolated vs in process."""
    body = _image_request([_png((64, 48))])
    medians = {}
    for name, extra in (("isolated", ()), ("in process", ("--no-isolate-decoding",))):
        server = ServerProcess(model, 4, extra)
        try:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"},
                              timeout=REQUEST_TIMEOUT) as client:
                for _ in range(2):  # warm-up: the fork server imports the SDK on its first call
                    client.post("/v1/chat/completions", json=body).raise_for_status()
                times = []
                for _ in range(repeats):
                    began = time.perf_counter()
                    client.post("/v1/chat/completions", json=body).raise_for_status()
                    times.append(time.perf_counter() - began)
            medians[name] = statistics.median(times) * 1000
        finally:
            server.stop()
    return {"isolated_ms": round(medians["isolated"], 1), "in_process_ms": round(medians["in process"], 1),
            "overhead_ms": round(medians["isolated"] - medians["in process"], 1), "repeats": repeats}


def many_large_images(model: Path, count: int = 24, side: int = 6000) -> dict[str, Any]:
    """Idle and peak RSS of the server (with its workers) answering ``count`` ``side``-px images in one request."""
    image = _png((side, side))
    body = _image_request([image] * count)
    body_mb = len(json.dumps(body)) / 2**20
    server = ServerProcess(model, 4, ("--max-body-mb", str(int(body_mb) + 8), "--request-timeout", "1200"))
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"},
                          timeout=1200) as client:
            client.post("/v1/chat/completions", json=_image_request([_png((64, 48))])).raise_for_status()  # warm
            time.sleep(1)
            idle = _tree_rss(server.process.pid)
            peak = [idle]
            done = False

            def sample() -> None:
                while not done:
                    peak[0] = max(peak[0], _tree_rss(server.process.pid))
                    time.sleep(0.05)

            import threading

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            began = time.perf_counter()
            response = client.post("/v1/chat/completions", json=body)
            wall = time.perf_counter() - began
            done = True
            sampler.join()
    finally:
        server.stop()
    return {"images": count, "pixels": f"{side}x{side}", "png_mb": round(len(image) / 2**20, 2),
            "status": response.status_code, "wall_s": round(wall, 1), "idle_rss_mb": round(idle / 2**20),
            "peak_rss_mb": round(peak[0] / 2**20), "growth_mb": round((peak[0] - idle) / 2**20)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--skip-decoding", action="store_true", help="leave out the two decoding measurements")
    parser.add_argument("--skip-load", action="store_true", help="only the two decoding measurements")
    parser.add_argument("--images", type=int, default=24, help="36-MP images in the large request")
    args = parser.parse_args()
    rows = [] if args.skip_load else run(args.requests, args.concurrency, args.max_tokens)
    decoding: dict[str, Any] = {}
    if not args.skip_decoding:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            model = _make_model(Path(tmp))
            decoding["sandbox"] = sandbox_overhead(model)
            if args.images:
                decoding["large_images"] = many_large_images(model, args.images)
    if args.json:
        print(json.dumps({"runs": rows, **decoding}, indent=2))
    else:
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
              f"{os.getloadavg()[0]:.1f}, {platform.python_implementation()} {platform.python_version()}, "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; tiny model, max_tokens {args.max_tokens}, greedy; "
              f"{args.requests} requests, {args.concurrency} concurrent clients, loopback")
        header = (f"{'run':<16} {'wall s':>7} {'req/s':>6} {'tok/s':>6} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
                  f"{'429 ms p50/max':>15} {'200':>4} {'429':>4} {'other':>5} {'attempts':>8} {'ok':>3}")
        print(header)
        for row in rows:
            refusals = (f"{row['refusal_p50_ms']}/{row['refusal_max_ms']}" if row["refusal_p50_ms"] is not None
                        else "-")
            print(f"{row['name']:<16} {row['wall_s']:>7} {row['req_per_s']:>6} {row['tokens_per_s']:>6} "
                  f"{row['p50_ms']:>7} {row['p90_ms']:>7} {row['p99_ms']:>7} {refusals:>15} {row['ok']:>4} "
                  f"{row['refused_429']:>4} {row['other']:>5} {row['attempts']:>8} "
                  f"{'no' if row['failed'] else 'yes':>3}")
            for error in row["errors"]:
                print(f"    {error}")
        print("429 ms: how fast a refusal came back (a retried request's 429s included); ok: no failed or "
              "lost request, every answer to a prompt identical")
        if decoding:
            box = decoding["sandbox"]
            print(f"sandboxed decoding, one 64x48 data-URL PNG per request (median of {box['repeats']}): "
                  f"isolated {box['isolated_ms']} ms, in process {box['in_process_ms']} ms, "
                  f"overhead {box['overhead_ms']} ms per request")
        if "large_images" in decoding:
            big = decoding["large_images"]
            print(f"{big['images']} data-URL PNGs of {big['pixels']} ({big['png_mb']} MB each) in one request: "
                  f"HTTP {big['status']} in {big['wall_s']} s; server + workers RSS idle {big['idle_rss_mb']} MB, "
                  f"peak {big['peak_rss_mb']} MB (+{big['growth_mb']} MB)")
    return 1 if any(row["failed"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
