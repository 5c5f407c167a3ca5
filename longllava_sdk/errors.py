"""Typed errors raised by the SDK.

Every error that comes from a user's input names the offending file (or object) and the
problem, so that a bad row in a 10 000-sample dataset can be found without a debugger.
All of them derive from :class:`LongLLaVAError`, so callers can catch one type.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from contextlib import contextmanager
from os import PathLike
from typing import Any, Iterator

# Errors tell the user what to change. A Python caller changes a keyword argument, a shell user
# a flag, an HTTP client a field of its request: the same error renders its advice for
# whichever interface is running it.
_interface: contextvars.ContextVar[str] = contextvars.ContextVar("longllava_interface", default="python")


@contextmanager
def _interface_block(name: str) -> Iterator[None]:
    token = _interface.set(name)
    try:
        yield
    finally:
        _interface.reset(token)


def cli_interface() -> contextlib.AbstractContextManager[None]:
    """Inside this block, errors phrase their advice as command-line flags (the CLI sets it)."""
    return _interface_block("cli")


def http_interface() -> contextlib.AbstractContextManager[None]:
    """Inside this block, errors phrase their advice as request fields (the HTTP server sets it)."""
    return _interface_block("http")


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def option_hint(name: str, value: Any = True) -> str:
    """How to set option ``name`` to ``value``: ``overwrite=True`` in Python, ``--overwrite`` on the
    CLI, ``"overwrite": true`` in an HTTP request.

    ``value`` may be a placeholder string such as ``"NAME"`` or ``"DIR"``.
    """
    if _interface.get() == "http":
        return f"{json.dumps(name)}: {json.dumps(value, default=str)}"
    if _interface.get() == "cli":
        flag = "--" + name.replace("_", "-")
        if value is True:
            return flag
        if value is False:
            return f"--no-{name.replace('_', '-')}"
        return f"{flag} {_cli_value(value)}"
    shown = value if isinstance(value, bool) or not isinstance(value, str) or value.isupper() else repr(value)
    return f"{name}={shown}"


def adapter_option_hint(name: str, value: Any = True) -> str:
    """How to pass adapter option ``name``: ``allow_non_parallel=True`` in Python (in
    ``adapter_options`` / the adapter's constructor), ``--adapter-option allow_non_parallel=true`` on the CLI,
    ``"adapter_options": {"allow_non_parallel": true}`` in an HTTP request."""
    if _interface.get() == "http":
        return f'"adapter_options": {{{json.dumps(name)}: {json.dumps(value, default=str)}}}'
    if _interface.get() == "cli":
        return f"--adapter-option {name}={_cli_value(value)}"
    placeholder = isinstance(value, str) and (value.isupper() or ".." in value)
    shown = value if not isinstance(value, str) or placeholder else repr(value)
    return f"{name}={shown}"


class LongLLaVAError(Exception):
    """Base class of every error the SDK raises on purpose."""


class ConfigError(LongLLaVAError, ValueError):
    """A configuration, preset or recipe is invalid or inconsistent."""


class InputError(LongLLaVAError, ValueError):
    """An input source (file, folder, manifest row) cannot be used.

    Args:
        path: the file or folder the problem is in (``None`` for in-memory objects).
        problem: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


class AdapterError(InputError):
    """An input adapter could not read a source (corrupt, truncated, unsupported...).

    Errors the adapters translate from a library's exception (see
    :func:`longllava_sdk.adapters.guarded_load`) chain it (``__cause__``); ``internal`` is
    ``True`` when that exception looks like a bug in the adapter itself rather than bad data
    (a ``TypeError`` raised in SDK code, for instance): please report the file.
    """

    internal: bool = False
    #: The library exception type this error was translated from by the adapters' guard
    #: (``"module.Type"``), ``None`` for errors the adapters raise themselves.
    translated_from: str | None = None


class ResourceLimitError(AdapterError):
    """A source needs more than an adapter's resource limit allows (decoded bytes, pixels,
    frames, tiles, CPU time), checked from the headers before the data is decoded. The message
    names the adapter option (a keyword argument) that raises the limit."""


class DecodeLimitError(ResourceLimitError):
    """Decoding a source in an isolated worker process ran past its limits (see
    :mod:`longllava_sdk.isolation`): ``limit`` is ``timeout`` (wall clock or CPU time),
    ``memory`` (address space), ``crashed`` (the decoder killed its process) or ``stopped``
    (the caller gave up)."""

    def __init__(self, path: str | PathLike[str] | None, problem: str, *, limit: str = "timeout"):
        super().__init__(path, problem)
        self.limit = limit


class OutsideRootError(AdapterError):
    """A file an adapter would open lies outside the allowed root (symlinks resolved); see
    :func:`longllava_sdk.adapters.allowed_root`."""


class SpecialFileError(AdapterError):
    """A path names a FIFO, socket, device (or a folder) where a regular file is read; see
    :mod:`longllava_sdk.local_files`. Raised before any byte is read, so it never blocks."""


class UnsupportedSourceError(AdapterError):
    """No installed adapter claims the source, or the named adapter does not exist."""


class MissingDependencyError(AdapterError):
    """Reading the source needs an optional package that is not installed."""


class ProtocolError(LongLLaVAError, ValueError):
    """Prompt text and media do not agree (placeholder counts, truncation through media)."""


class CheckpointError(LongLLaVAError):
    """A checkpoint cannot be loaded, saved or converted safely."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickle files and the caller did not opt in to loading them."""


class PluginError(LongLLaVAError):
    """A plugin failed to load or violates a hook specification."""


class DatasetError(LongLLaVAError, ValueError):
    """A training dataset failed validation; ``problems`` lists every bad row at once."""

    def __init__(self, source: str | PathLike[str], problems: list[str]):
        self.source = str(source)
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{self.source}: {len(self.problems)} invalid row(s):\n  {shown}{more}")


class TrainingError(LongLLaVAError):
    """Training cannot start or continue (output dir, resume, missing gradients...)."""


class RegistryLookupError(ConfigError):
    """A name (domain, preset, adapter, head, format...) that nothing registered answers to.

    Attributes:
        kind: what was looked up (``domain``, ``head``...).
        name: the name given.
        choices: the names that exist, sorted.
        suggestion: the closest existing name, if one is close enough.
    """

    def __init__(self, kind: str, name: str, choices: list[str], message: str) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        self.suggestion = did_you_mean(name, choices)
        super().__init__(message)


def did_you_mean(name: str, choices: Any) -> str | None:
    """The choice closest to ``name`` (case and ``-``/``_`` ignored), or ``None`` when none is close."""
    import difflib

    def norm(text: str) -> str:
        return str(text).lower().replace("-", "_")

    by_norm = {norm(c): str(c) for c in choices}
    close = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=0.6)
    return by_norm[close[0]] if close else None


def unknown_name_message(kind: str, name: str, choices: Any, *, listing: str = "available", hint: str = "") -> str:
    """``unknown domain 'medcal' (did you mean 'medical'?); available: medical, video``.

    The one wording of every registry miss (domains, presets, adapters, heads, importer /
    exporter formats): importers and other callers build their errors with it or with
    :func:`unknown_name_error`.
    """
    names = sorted(str(c) for c in choices)
    close = did_you_mean(name, names)
    suggestion = f" (did you mean {close!r}?)" if close else ""
    extra = f" {hint}" if hint else ""
    return f"unknown {kind} {name!r}{suggestion}; {listing}: {', '.join(names) or 'none'}{extra}"


def unknown_name_error(kind: str, name: str, choices: Any, *, listing: str = "available",
                       hint: str = "") -> RegistryLookupError:
    """The :class:`RegistryLookupError` (a :class:`ConfigError`) for ``name`` not among ``choices``."""
    names = sorted(str(c) for c in choices)
    return RegistryLookupError(kind, name, names, unknown_name_message(kind, name, names, listing=listing, hint=hint))
