"""Run one adapter load in a forked worker under an address-space and a wall-clock limit.

The fork, the limits and the kill are the SDK's own (:mod:`longllava_sdk.isolation`, which
the HTTP server decodes media with): a forkserver process imports the adapters once; every
case is a fresh fork of it, so a case that leaks, hangs or crashes cannot affect the next.
In the worker:

* ``RLIMIT_AS`` is set to the worker's current address space plus ``memory_mb`` (so the
  limit means "may grow by this much", whatever the preloaded libraries map), and
  ``RLIMIT_CPU`` to a little more than the wall-clock limit;
* ``socket.socket.connect`` / ``connect_ex`` / ``sendto`` and ``socket.create_connection``
  record the address and raise, so a Python-level connection attempt is seen and blocked
  (GDAL's and FFmpeg's C-level sockets are checked by a listening socket in the tests);
* an audit hook records every file Python opens, so a file under a ``forbidden`` directory
  (the target of a symlink leaving the allowed root) is reported;
* the working directory is a fresh empty directory, and the source's directory is
  snapshotted before and after, so any file the load writes is reported.

:func:`run_job` returns an :class:`Outcome`; the parent kills a worker that outlives the
wall-clock limit (``hang``).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from longllava_sdk.isolation import limit_child, spawn

#: Outcomes, from best to worst. ``ok`` and ``typed`` are the acceptable ones.
OUTCOMES = ("ok", "typed", "internal", "untyped", "hang", "memory", "crash", "escape", "network", "wrote")
ACCEPTABLE = ("ok", "typed")
PRELOAD = [
    "numpy", "PIL.Image", "pydicom", "nibabel", "rasterio", "av",
    "longllava_sdk.adapters", "longllava_plugins.tiff_layout",
    "longllava_plugins.dicom", "longllava_plugins.nifti", "longllava_plugins.geotiff",
    "longllava_plugins.video", "longllava_plugins.images", "longllava_sdk.training.data",
]


@dataclass
class Outcome:
    """What one case did."""

    outcome: str
    error_type: str | None = None
    error_path: str | None = None
    problem: str | None = None
    message: str | None = None
    cause_type: str | None = None
    n_images: int | None = None
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    rss_growth_mb: float | None = None
    sockets: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    forbidden_opens: list[str] = field(default_factory=list)
    translated_from: str | None = None
    traceback: str | None = None
    signal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_job(job: dict[str, Any], *, timeout_s: float = 10.0, memory_mb: int = 2048) -> Outcome:
    """Run ``job`` (see :func:`_execute`) in a forked worker; the worker's verdict or ``hang``/``crash``."""
    workdir = tempfile.mkdtemp(prefix="longllava-fuzz-cwd-")  # removed here, even if the worker is killed
    job = dict(job, memory_mb=memory_mb, cpu_limit_s=int(timeout_s * 2) + 5, workdir=workdir)
    try:
        result, ended = spawn(_worker, (job,), timeout_s, preload=(*PRELOAD, __name__, __name__.rsplit(".", 1)[0] + ".hostile"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if ended is None:
        return Outcome(**result)
    wall = round(ended.elapsed, 3)
    if ended.killed:
        return Outcome("hang", wall_s=wall, message=f"killed after {timeout_s:g} s")
    name = ended.signal or f"exit {ended.exitcode}"
    return Outcome("hang" if name == "SIGXCPU" else "crash", wall_s=wall, signal=name, message=f"worker died ({name})")


# ------------------------------------------------------------------------------------------
# in the worker
# ------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _snapshot(paths: list[str]) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for top in paths:
        if not os.path.isdir(top):
            continue
        for root, _dirs, files in os.walk(top):
            for name in files:
                full = os.path.join(root, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                found[full] = (st.st_size, st.st_mtime_ns)
    return found


def _block_network(record: list[str]) -> None:
    import socket

    def refuse(address: Any) -> OSError:
        record.append(repr(address))
        return OSError(f"network access attempted in the fuzz sandbox: {address!r}")

    def connect(self: Any, address: Any) -> None:
        raise refuse(address)

    def connect_ex(self: Any, address: Any) -> int:
        raise refuse(address)

    def sendto(self: Any, data: Any, *args: Any) -> int:
        raise refuse(args[-1] if args else None)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        raise refuse(address)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign]
    socket.create_connection = create_connection  # type: ignore[assignment]


def _worker(send: Any, job: dict[str, Any]) -> None:
    sockets: list[str] = []
    opened: list[str] = []
    forbidden = [os.path.realpath(p) for p in job.get("forbidden", [])]

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and forbidden and args and isinstance(args[0], (str, bytes, os.PathLike)):
            try:
                real = os.path.realpath(os.fsdecode(args[0]))
            except (TypeError, ValueError):
                return
            if any(real == f or real.startswith(f + os.sep) for f in forbidden):
                opened.append(real)

    sys.addaudithook(audit)
    _block_network(sockets)
    workdir = job["workdir"]
    os.chdir(workdir)
    watched = [p for p in job.get("watch", []) if os.path.isdir(p)]
    before = _snapshot(watched)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit_child(job["memory_mb"], job["cpu_limit_s"])  # soft limits only: RLIMIT_AS is lifted again below
    rss0 = _rss_mb()
    started, cpu0 = time.monotonic(), time.process_time()
    result: dict[str, Any]
    try:
        n_images, warned = _execute(job)
        result = {"outcome": "ok", "n_images": n_images, "warnings": warned}
    except BaseException as exc:  # noqa: BLE001 - classifying is the point
        result = _classify(exc)
    result["wall_s"] = round(time.monotonic() - started, 3)
    result["cpu_s"] = round(time.process_time() - cpu0, 3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_mb"] = round(peak, 1)
    result["rss_growth_mb"] = round(max(0.0, peak - rss0), 1)
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    after = _snapshot(watched)
    written = sorted(p for p, st in after.items() if before.get(p) != st)
    written += sorted(os.path.join(workdir, name) for name in os.listdir(workdir))
    result.update(sockets=sockets, written=written, forbidden_opens=sorted(set(opened)))
    if result["outcome"] in ("ok", "typed"):
        if sockets:
            result["outcome"] = "network"
        elif opened:
            result["outcome"] = "escape"
        elif written:
            result["outcome"] = "wrote"
    try:
        send.send(result)
    finally:
        send.close()
        os._exit(0)  # skip atexit handlers and library destructors of the forked copy


def _classify(exc: BaseException) -> dict[str, Any]:
    from longllava_sdk.errors import LongLLaVAError

    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    cause = exc.__cause__
    base: dict[str, Any] = {
        "error_type": kind, "message": str(exc)[:2000],
        "cause_type": None if cause is None else f"{type(cause).__module__}.{type(cause).__qualname__}",
    }
    if isinstance(exc, LongLLaVAError):
        base.update(error_path=getattr(exc, "path", None) or getattr(exc, "source", None),
                    problem=getattr(exc, "problem", None), translated_from=getattr(exc, "translated_from", None))
        # FFmpeg answers absurd container counts with ENOMEM before allocating (av.error.MemoryError,
        # reproducible without any limit): a refusal, not memory exhaustion.
        refused = type(cause).__module__.startswith("av.")
        out_of_memory = (isinstance(cause, MemoryError) and not refused) or "OutOfMemory" in type(cause).__name__
        if out_of_memory:
            base["outcome"] = "memory"
        elif getattr(exc, "internal", False):
            base["outcome"] = "internal"
        else:
            base["outcome"] = "typed"
        if base["outcome"] != "typed" or base["translated_from"]:
            base["traceback"] = _short_traceback(cause or exc)
        return base
    base["outcome"] = "memory" if isinstance(exc, MemoryError) else "untyped"
    base["traceback"] = _short_traceback(exc)
    return base


def _short_traceback(exc: BaseException) -> str:
    lines = "".join(traceback.format_exception(exc)).splitlines()
    return "\n".join(line if len(line) < 300 else line[:300] + "..." for line in lines)[-6000:]


def _execute(job: dict[str, Any]) -> tuple[int, list[str]]:
    """Run the job; returns the number of images produced and the warnings. Job kinds:

    ``adapter``: ``{"adapter": name, "options": {...}, "source": path or [paths], "max_images": n}``
    ``manifest``: ``{"manifest": path, "root": data root}``: every row is read, its paths
    resolved and its sources loaded as training validation does (typed errors of single
    sources are expected and counted as ``ok`` for the file; anything else propagates).
    ``call``: ``{"call": "module:function", "args": [...]}`` (harness self-tests).
    """
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.getLogger("nibabel").setLevel(logging.ERROR)
    kind = job["kind"]
    if kind == "adapter":
        from longllava_sdk.adapters import allowed_root
        from longllava_sdk.registry import available_adapters

        adapter = available_adapters()[job["adapter"]](**job.get("options", {}))
        with allowed_root(job.get("root")):
            media = adapter.load(job["source"], max_images=job.get("max_images"))
        return len(media.images), [str(w) for w in media.info.get("warnings", [])]
    if kind == "manifest":
        return _manifest(job), []
    if kind == "call":
        import importlib

        module, name = job["call"].split(":")
        return int(getattr(importlib.import_module(module), name)(*job.get("args", [])) or 0), []
    raise ValueError(f"unknown job kind {kind!r}")


def _manifest(job: dict[str, Any]) -> int:
    from longllava_sdk.errors import LongLLaVAError
    from longllava_sdk.training.data import MediaLoader, read_rows

    rows = read_rows(job["manifest"])
    loader = MediaLoader(job["root"])
    images = 0
    for row in rows:
        if row.problems:
            continue
        for source in row.sources:
            try:
                paths = loader.resolve_paths(source)
                media = loader.load(source, len(row.sources), paths)
            except LongLLaVAError:
                continue  # a bad row: validation reports it
            images += len(media.images)
    return images
