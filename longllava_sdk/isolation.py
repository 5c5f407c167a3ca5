"""Untrusted decoding in a killable child process, under OS limits (address space, CPU time).

Third-party C decoders (FFmpeg through PyAV, GDAL, libtiff, OpenJPEG, zlib in Pillow) can
hang or balloon inside one call, where no Python-level budget reaches. :func:`run_isolated`
runs a function in a fresh child process instead:

* the child is forked from a ``forkserver`` process that has imported the SDK once
  (``PRELOAD``), so a call costs a fork, not an interpreter start (~10-50 ms, see
  ``bench --suite serve``); every call gets a fresh child, so a decoder that leaked, crashed
  or left threads behind cannot affect the next one (no pool to repair);
* in the child ``RLIMIT_AS`` is set to its current address space plus ``memory_mb`` (the
  limit means "may grow by this much", whatever the preloaded libraries map) and
  ``RLIMIT_CPU`` to ``cpu_s``: both hold inside a C call, where Python cannot interrupt;
* the parent waits at most ``timeout_s`` of wall-clock time (and polls ``should_stop``, e.g.
  a request whose client went away), then SIGKILLs the child.

The result (or the exception the function raised, rebuilt in the parent with its type and
attributes) comes back through a pipe. Limits the child runs into become
:class:`~longllava_sdk.errors.DecodeLimitError` (``limit``: ``timeout``, ``memory`` or
``crashed``). ``tests/fuzz/sandbox.py`` (the fuzzer) runs its cases through :func:`spawn`.
"""

from __future__ import annotations

import contextvars
import multiprocessing
import os
import resource
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from . import errors
from .errors import ConfigError, DecodeLimitError, option_hint

#: Modules the fork server imports once; children inherit them already imported.
PRELOAD = ("longllava_sdk.isolation", "longllava_sdk.pipeline", "longllava_sdk.isolation_preload", "numpy",
           "PIL.Image")
#: How often the parent checks ``should_stop`` while it waits.
POLL_S = 0.05

_should_stop: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("isolation_should_stop",
                                                                                         default=None)


@dataclass(frozen=True)
class DecodeLimits:
    """What one isolated call may use.

    Attributes:
        timeout_s: wall-clock seconds before the child is killed.
        memory_mb: MiB the child's address space may grow by (``RLIMIT_AS``).
        cpu_s: CPU seconds of the child (``RLIMIT_CPU``); default: ``timeout_s`` + 1.
    """

    timeout_s: float = 30.0
    memory_mb: int = 2048
    cpu_s: float | None = None

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb <= 0 or (self.cpu_s is not None and self.cpu_s <= 0):
            raise ConfigError(f"decode limits must be positive, got {self}")

    @property
    def cpu_limit(self) -> int:
        return max(1, int(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))


def requested_limits(isolate_decoding: bool, decode_timeout: float = DecodeLimits.timeout_s,
                     decode_memory_mb: int = DecodeLimits.memory_mb) -> DecodeLimits | None:
    """The limits a run's options ask for: ``None`` (decode in-process) unless ``isolate_decoding``.

    The option names are those of ``finetune``, ``eval data`` and ``serve``; a limit that is
    not positive is a :class:`ConfigError` naming its option (``--decode-timeout`` on the CLI).
    """
    for name, value in (("decode_timeout", decode_timeout), ("decode_memory_mb", decode_memory_mb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{option_hint(name, 'N')} must be a positive number, got {value!r}")
    if not isolate_decoding:
        return None
    return DecodeLimits(timeout_s=float(decode_timeout), memory_mb=int(decode_memory_mb))


_CONTEXT: Any = None


def context(preload: tuple[str, ...] = ()) -> Any:
    """The ``forkserver`` multiprocessing context (one fork server per process, shared).

    ``preload`` adds modules to import in the fork server; it applies only if the server has
    not started yet (the preload list is global to the process).
    """
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
    _CONTEXT.set_forkserver_preload(list(dict.fromkeys(PRELOAD + tuple(preload))))
    return _CONTEXT


def warm_up() -> None:
    """Start the fork server and let it import :data:`PRELOAD` now (seconds), not on the first call."""
    run_isolated(_nothing, limits=DecodeLimits(timeout_s=600), what="starting the decoding workers")


def _nothing() -> None:
    return None


@contextmanager
def stopping_when(check: Callable[[], bool]) -> Iterator[None]:
    """Isolated calls made inside the block also end (child killed) as soon as ``check()`` is true."""
    token = _should_stop.set(check)
    try:
        yield
    finally:
        _should_stop.reset(token)


def limit_child(memory_mb: int, cpu_s: int) -> None:
    """In a child: may grow its address space by ``memory_mb`` MiB and use ``cpu_s`` CPU seconds.

    Soft limits only (the hard ones stay), so the child itself could lift them again after
    the untrusted part (the fuzzer does, to report).
    """
    with open("/proc/self/status") as status:
        vm_kib = next((int(line.split()[1]) for line in status if line.startswith("VmSize:")), 0)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm_kib * 1024 + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    used = int(time.process_time()) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (used + cpu_s if cpu_hard == resource.RLIM_INFINITY
                                             else min(used + cpu_s, cpu_hard), cpu_hard))


@dataclass
class Exit:
    """How a child ended without answering: killed by the parent (``timeout``) or by a signal / exit."""

    killed: bool
    signal: str | None
    exitcode: int | None
    elapsed: float


def spawn(worker: Callable[..., None], args: tuple[Any, ...], timeout_s: float, *,
          preload: tuple[str, ...] = (), should_stop: Callable[[], bool] | None = None) -> tuple[Any, Exit | None]:
    """Run ``worker(send, *args)`` in a forked child; ``(message, None)`` or ``(None, Exit)``.

    ``worker`` sends one message through ``send`` (a pipe end) and exits. The child is
    killed after ``timeout_s`` or when ``should_stop()`` turns true.
    """
    _check_main_is_importable()
    ctx = context(preload)
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=worker, args=(send, *args), daemon=True)
    child.start()  # returns once the fork server has forked it (the server's first start is not counted)
    started = time.monotonic()
    send.close()
    message: Any = None
    answered = died = False
    try:
        deadline = started + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (should_stop is not None and should_stop()):
                break
            if receive.poll(min(POLL_S, left)):
                try:
                    message, answered = receive.recv(), True
                except EOFError:  # the child died without answering
                    died = True
                break
    finally:
        receive.close()
    elapsed = time.monotonic() - started
    if answered:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)
        return message, None
    # Past the deadline (or asked to stop) the parent ends the child, whatever it does next: a
    # child finishing in the same instant would otherwise die writing to the closed pipe and
    # read as a crash.
    killed = not died
    if killed:
        child.kill()
    child.join(5)
    code = child.exitcode
    name = signal.Signals(-code).name if code is not None and code < 0 and not killed else None
    return None, Exit(killed=killed, signal=name, exitcode=code, elapsed=elapsed)


def _check_main_is_importable() -> None:
    """Refuse, with advice, a main program the fork server's children cannot re-import.

    multiprocessing prepares every forkserver child by re-running the parent's ``__main__``
    from its file; code read from standard input (``python - <<EOF``) has the file name
    ``<stdin>``, so every child would exit at once and each read would look like a crash.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is None and path is not None and not os.path.isfile(path):
        raise ConfigError(f"isolated decoding starts its workers through multiprocessing's fork server, which "
                          f"re-imports the main program, and {path!r} is not a file it can import: run the code "
                          f"from a .py file (or a module, `python -m`), or turn isolation off "
                          f"({option_hint('isolate_decoding', False)})")


def run_isolated(function: Callable[..., Any], *args: Any, limits: DecodeLimits, source: str | None = None,
                 what: str = "decoding") -> Any:
    """``function(*args)`` in a killable child under ``limits``; its result, or its exception re-raised here.

    Args:
        function: a module-level function (pickled by reference), its arguments and result
            picklable.
        limits: wall clock, address space and CPU time of the child.
        source: the file the call reads, named by the :class:`DecodeLimitError` messages.
        what: what the call does, for messages (``decoding``).

    Raises:
        DecodeLimitError: the child ran past ``timeout_s`` or its CPU limit (``timeout``),
            out of its address space (``memory``), or died otherwise (``crashed``).
    """
    # The interface errors phrase their advice for (CLI flags, request fields) goes along.
    interface = errors._interface.get()
    message, exit_ = spawn(_child, (function, args, limits.memory_mb, limits.cpu_limit, interface), limits.timeout_s,
                           should_stop=_should_stop.get())
    if exit_ is not None:
        stop = _should_stop.get()
        if exit_.killed and stop is not None and stop():
            raise DecodeLimitError(source, f"{what} was stopped (the request ended)", limit="stopped")
        if exit_.killed or exit_.signal == "SIGXCPU":
            raise DecodeLimitError(source, f"{what} took longer than its limit of {limits.timeout_s:g} s "
                                           "(the worker process was killed)", limit="timeout")
        how = f"signal {exit_.signal}" if exit_.signal else f"exit status {exit_.exitcode}"
        raise DecodeLimitError(source, f"{what} crashed its worker process ({how}); the file is likely malformed",
                               limit="crashed")
    kind, payload = message
    if kind == "ok":
        return payload
    if kind == "memory":
        raise DecodeLimitError(source, f"{what} needs more memory than its limit of {limits.memory_mb} MiB",
                               limit="memory")
    raise _rebuild(*payload)


def _child(send: Any, function: Callable[..., Any], args: tuple[Any, ...], memory_mb: int, cpu_s: int,
           interface: str) -> None:
    try:
        limit_child(memory_mb, cpu_s)
        try:
            with errors._interface_block(interface):
                result: tuple[str, Any] = ("ok", function(*args))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the parent
            result = ("memory", None) if _out_of_memory(exc) else ("raise", _portable(exc))
        try:
            send.send(result)
        except Exception as exc:  # noqa: BLE001 - an unpicklable result
            send.send(("raise", _portable(exc)))
    finally:
        send.close()
        os._exit(0)  # no atexit handlers or library destructors in the forked copy


def _out_of_memory(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        # FFmpeg answers absurd container counts with ENOMEM before allocating
        # (av.error.MemoryError): a refusal of the file, reported as such, not as exhaustion.
        if isinstance(seen, MemoryError) and not type(seen).__module__.startswith("av."):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _portable(exc: BaseException) -> tuple[type[BaseException] | None, tuple[Any, ...], dict[str, Any], str]:
    """An exception as (class, args, attributes, text): rebuilt in the parent without calling ``__init__``."""
    import pickle

    state = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
    try:
        pickle.dumps((type(exc), exc.args, state))
        return type(exc), exc.args, state, str(exc)
    except Exception:  # noqa: BLE001
        return None, (), {}, f"{type(exc).__name__}: {exc}"


def _rebuild(cls: type[BaseException] | None, args: tuple[Any, ...], state: dict[str, Any], text: str) -> BaseException:
    if cls is None:
        return RuntimeError(text)
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc
