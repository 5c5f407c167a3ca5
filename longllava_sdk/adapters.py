"""Input adapters: the base class every adapter plugin subclasses.

An adapter is registered through the ``longllava_register_adapters`` hook (see
:mod:`longllava_sdk.hookspecs`), built-ins exactly like third-party ones. Which adapter reads
a source is decided in one place, :func:`longllava_sdk.registry.resolve_adapter`: the
one named, else among the adapters of the requested :attr:`~InputAdapter.kind` the first
that :meth:`~InputAdapter.claims` the path (extension first, then a cheap header sniff).

An adapter's options are the keyword arguments of its ``__init__``; their type hints are the
contract (:meth:`InputAdapter.options`), so values given as text (``--adapter-option
window=lung`` on the command line, a CSV cell) are converted by :meth:`InputAdapter.coerce_options`.

Reliability machinery shared by every built-in adapter (see ``docs/reliability.md``):

* :func:`guarded_load` / :func:`guarded_claims` wrap an adapter's public entry points: the
  exceptions of the libraries underneath (pydicom, nibabel/numpy, rasterio/GDAL, PyAV,
  Pillow, zlib, ``struct``, ``OSError``, ``MemoryError``...) leave as
  :class:`~longllava_sdk.errors.AdapterError` naming the file being read, with the original
  exception chained. That is the one place errors are translated.
* :func:`allowed_root` confines every file an adapter opens (after walking a folder and
  following symlinks) to a root; adapters call :func:`confine` on each file before opening it.
* :func:`check_limit` and :func:`check_time_budget` enforce the resource limits the adapters
  take as options (``max_decoded_bytes``, ``time_budget_s``...), raising
  :class:`~longllava_sdk.errors.ResourceLimitError` before anything large is allocated.
"""

from __future__ import annotations

import collections.abc
import contextlib
import functools
import inspect
import json
import os
import re
import struct
import time
import types
import typing
import zlib
from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError

from . import local_files
from .errors import (
    AdapterError,
    ConfigError,
    LongLLaVAError,
    MissingDependencyError,
    OutsideRootError,
    ResourceLimitError,
    UnsupportedSourceError,
    adapter_option_hint,
)
from .media import Media, MediaKind
from .root_jail import real_root
from .units import format_bytes  # noqa: F401 - re-exported for adapters
from .validation import problems as validation_problems


@dataclass(frozen=True)
class AdapterOption:
    """One option an adapter declares (a keyword argument of its ``__init__``).

    Attributes:
        name: the keyword.
        annotation: its type hint as text (``"bool"``, ``"str | None"``...).
        default: its default value.
        doc: its description from the ``Args:`` section of ``__init__`` or the class docstring.
    """

    name: str
    annotation: str
    default: Any
    doc: str

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


class InputAdapter(ABC):
    """Turns one source into a :class:`~longllava_sdk.media.Media`.

    Subclasses set ``name`` (unique, used by ``adapter=`` and in recipes), ``kind`` and
    ``extensions``, take their options as keyword arguments in ``__init__`` and implement
    :meth:`load`. They must stream (hold at most the requested output images plus a bounded
    working set), meet ``max_images`` by sampling with :func:`sample_indices`, never touch
    the network, and raise :class:`~longllava_sdk.errors.AdapterError` (naming the file)
    for anything they cannot read.

    The built-in adapters decorate ``load`` with :func:`guarded_load` (and a file-reading
    ``claims`` with :func:`guarded_claims`), check a single-file source with
    :func:`local_source`, open every file with :func:`open_confined` (regular files inside the
    allowed root only) or call :func:`confine` on a path a library opens itself, check their limits with :func:`check_limit` before allocating, and call
    :func:`check_time_budget` between units of work; plugin adapters should do the same.
    """

    name: ClassVar[str]
    kind: ClassVar[MediaKind]
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Lower numbers are asked first when several adapters claim the same path.
    priority: ClassVar[int] = 100
    #: Options a remote client (an HTTP request's content part) may set: only those that
    #: choose *what* is read (window, series, clip, bands...), never a limit, so a request
    #: cannot raise its own resource budget. A server operator may replace the list
    #: (``--client-adapter-options``).
    client_options: ClassVar[tuple[str, ...]] = ()
    #: Libraries whose exceptions mean "this data cannot be read" (not a bug of the
    #: adapter): top-level module name -> name shown to the user, e.g. ``{"pydicom":
    #: "pydicom"}``. :func:`guarded_load` reports them as corrupt data; the standard library's
    #: decoders, numpy and Pillow are always counted.
    data_error_libraries: ClassVar[Mapping[str, str]] = {}

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"adapter {self.name!r} takes no options {sorted(options)}")

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Cheap test (extension, then a few header bytes) of whether this adapter reads ``path``."""
        name = path.name.lower()
        return any(name.endswith(ext) for ext in cls.extensions)

    # -- options ---------------------------------------------------------------------------
    @classmethod
    def options(cls) -> dict[str, AdapterOption]:
        """The options this adapter declares: its ``__init__`` keyword arguments, in order."""
        init = cls.__init__
        if init is InputAdapter.__init__:
            return {}
        docs = {**_arg_docs(inspect.getdoc(cls) or ""), **_arg_docs(inspect.getdoc(init) or "")}
        hints = _type_hints(init)
        found = {}
        for name, param in inspect.signature(init).parameters.items():
            if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            annotation = hints.get(name, param.annotation)
            found[name] = AdapterOption(name, _describe_type(annotation),
                                        None if param.default is param.empty else param.default, docs.get(name, ""))
        return found

    @classmethod
    def coerce_options(cls, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """``options`` converted to the declared types; text values (CLI, CSV) are parsed.

        ``"true"``/``"false"`` for bools, numbers for ints / floats, comma-separated or JSON
        lists for sequences, ``"none"`` for optional values; values that already have a
        Python type pass through (the adapter validates them).

        Raises:
            ConfigError: an option the adapter does not declare (the error lists those it
                does), or a text value that does not parse as the declared type.
        """
        options = dict(options or {})
        declared = cls.options()
        unknown = sorted(set(options) - set(declared))
        if unknown:
            listing = ", ".join(declared) or "none"
            raise ConfigError(f"adapter {cls.name!r} has no option(s) {unknown}; its options: {listing}")
        hints = _type_hints(cls.__init__)
        out, problems = {}, []
        for name, value in options.items():
            if isinstance(value, str):
                try:
                    value = _parse_text(value, hints.get(name, str))
                except ValidationError as exc:
                    details = [p.split(": ", 1)[-1] for p in validation_problems(exc)]
                    extra = [d for d in details if not d.startswith("expected") and " is not one of " not in d]
                    problems.append(f"{name}={value!r}: expected {declared[name].annotation}"
                                    + (f" ({'; '.join(extra)})" if extra else ""))
                    continue
            out[name] = value
        if problems:
            raise ConfigError(f"adapter {cls.name!r} option " + "; ".join(problems))
        return out

    @abstractmethod
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read ``source`` into at most ``max_images`` RGB images (``None``: the adapter's default)."""


# ------------------------------------------------------------------------------------------
# Resource limits
# ------------------------------------------------------------------------------------------

#: Default bound on the decoded image data one source may need (1 GiB): the output RGB images
#: (Pillow keeps 4 bytes per RGB pixel) plus the decoded values an adapter holds at once, and
#: any stream it must inflate whole. Every adapter takes ``max_decoded_bytes=`` to change it.
DEFAULT_MAX_DECODED_BYTES = 1 << 30
#: Default CPU-time budget of one ``load`` (seconds of CPU time of the calling thread),
#: checked between slices, frames, tiles and files; ``time_budget_s=`` changes it.
DEFAULT_TIME_BUDGET_S = 60.0
#: Bytes Pillow allocates per pixel of an RGB image (it pads RGB to 32 bits).
RGB_BYTES_PER_PIXEL = 4


def check_limit(path: str | os.PathLike[str], value: int | float, limit: int | float | None, option: str,
                what: str, *, hint: str = "", unit: str = "") -> None:
    """Raise :class:`ResourceLimitError` naming ``option`` when ``value > limit`` (``None``: no limit).

    ``what`` says what was measured ("the sampled slices need ... decoded"); ``unit="bytes"``
    formats both numbers as byte counts.
    """
    if limit is None or value <= limit:
        return
    shown = (format_bytes(value), format_bytes(limit)) if unit == "bytes" else (f"{value:,}", f"{limit:,}")
    extra = f"; {hint}" if hint else ""
    raise ResourceLimitError(
        path, f"{what} is {shown[0]}, over the limit {option}={shown[1]}{extra}; pass "
              f"{adapter_option_hint(option, 'N')} to allow more"
    )


def validate_limit(name: str, value: Any, *, allow_none: bool = True, integer: bool = True) -> Any:
    """Check an adapter's limit option at construction: a positive number (or ``None``)."""
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------
# Confinement: the files an adapter may open
# ------------------------------------------------------------------------------------------

_ALLOWED_ROOT: ContextVar[Path | None] = ContextVar("longllava_allowed_root", default=None)


@contextlib.contextmanager
def allowed_root(root: str | os.PathLike[str] | None) -> Iterator[Path | None]:
    """Confine every file the adapters open inside this block to ``root`` (symlinks resolved).

    Used by the trainer's data loading (the data root) and the HTTP server (its root): a folder inside
    the root whose files are symlinks to files outside it is refused with
    :class:`~longllava_sdk.errors.OutsideRootError`, as is any file an adapter would open
    outside the root. ``None`` lifts the confinement for the block. The setting is a
    :class:`contextvars.ContextVar`, so it holds per thread / task.
    """
    real = None if root is None else real_root(root)
    token = _ALLOWED_ROOT.set(real)
    try:
        yield real
    finally:
        _ALLOWED_ROOT.reset(token)


def current_allowed_root() -> Path | None:
    """The root set by the innermost :func:`allowed_root`, or ``None``."""
    return _ALLOWED_ROOT.get()


def confine(path: str | os.PathLike[str]) -> Path:
    """Check a file (or folder) an adapter is about to open; returns ``Path(path)`` unchanged.

    Every adapter calls this on every file it opens (the source itself, each file found by
    walking a folder). When an :func:`allowed_root` is set, the file's real path (all
    symlinks resolved) must lie inside it, else :class:`OutsideRootError`. A FIFO, socket or
    device is a :class:`~longllava_sdk.errors.SpecialFileError` (opening a FIFO would block);
    a missing path passes (the caller reports it). The file also becomes the one errors of
    the current :func:`guarded_load` name. To open the file, use :func:`open_confined`.
    """
    candidate = Path(path)
    state = _READ_STATE.get()
    if state is not None:
        state.file = str(candidate)
    local_files.inside_root(candidate, _ALLOWED_ROOT.get())  # the one path jail (root_jail.confine_to)
    local_files.refuse_special(candidate)
    return candidate


def open_confined(path: str | os.PathLike[str], *, what: str = "file") -> BinaryIO:
    """``path`` opened for reading by an adapter: :func:`confine` (the allowed root, the file
    errors name), then :func:`longllava_sdk.local_files.open_regular` (non-blocking open,
    ``fstat`` of the opened file must be a regular file)."""
    return local_files.open_regular(confine(path), root=_ALLOWED_ROOT.get(), what=what)


def local_source(source: "Source", adapter_name: str | None = None, *, what: str = "file") -> Path:
    """The one path of a single-file source, checked: one path (a 1-item list is accepted when
    ``adapter_name`` is given), local (no URL), a regular file, inside the allowed root.

    The one "one local file" check of the adapters (:func:`longllava_sdk.local_files.local_file`
    plus :func:`confine`).
    """
    one = single_source(source, adapter_name) if adapter_name is not None else source
    return confine(local_files.local_file(one, root=_ALLOWED_ROOT.get(), what=what))


# ------------------------------------------------------------------------------------------
# Error translation and the per-load state
# ------------------------------------------------------------------------------------------


@dataclass
class _ReadState:
    adapter: str
    source: str
    budget: float | None
    file: str | None = None
    started: float = field(default_factory=time.thread_time)


_READ_STATE: ContextVar[_ReadState | None] = ContextVar("longllava_read_state", default=None)

#: Top-level packages whose exceptions mean "this data cannot be read" for every adapter; an
#: adapter adds its own libraries with :attr:`InputAdapter.data_error_libraries`.
_LIBRARIES = {
    "numpy": "numpy", "PIL": "Pillow", "gzip": "gzip", "zlib": "zlib",
    "struct": "struct", "_struct": "struct", "_io": "io", "io": "io", "lzma": "lzma", "bz2": "bz2",
}
#: Exception types that mean bad data wherever they are raised.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, ArithmeticError, struct.error, zlib.error, UnicodeError,
    NotImplementedError, BufferError, RecursionError,
)


def _library_of(exc: BaseException, libraries: Mapping[str, str]) -> str | None:
    """The library an exception comes from: its class's package, else the innermost frame's."""
    top = type(exc).__module__.split(".")[0]
    if top in libraries:
        return libraries[top]
    tb, inner = exc.__traceback__, None
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        top = name.split(".")[0]
        if top in libraries:
            inner = libraries[top]
        elif top in ("longllava_sdk", "longllava_plugins"):
            inner = None
        tb = tb.tb_next
    return inner


def translate_error(exc: BaseException, path: str | os.PathLike[str], adapter: str,
                    libraries: Mapping[str, str] | None = None) -> AdapterError:
    """The typed SDK error for a library exception raised while ``adapter`` read ``path``.

    ``libraries``: the adapter's :attr:`~InputAdapter.data_error_libraries` (added to the
    standard ones).
    """
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if len(detail) > 400:
        detail = detail[:400] + "..."
    if isinstance(exc, MemoryError):
        error: AdapterError = ResourceLimitError(
            path, f"ran out of memory while reading ({detail}); the file may declare more data than it holds, "
            "or lower max_images / max_decoded_bytes= so that the source fits in memory",
        )
    elif isinstance(exc, ModuleNotFoundError) and exc.name:
        error = MissingDependencyError(
            path, f"reading it needs the Python package {exc.name!r}, which is not installed ({detail})"
        )
    else:
        library = _library_of(exc, {**_LIBRARIES, **(libraries or {})})
        if library is not None:
            error = AdapterError(path, f"corrupt or unsupported data: {library} cannot read it ({detail})")
        elif isinstance(exc, _DATA_ERRORS):
            error = AdapterError(path, f"corrupt or unsupported data ({detail})")
        else:
            error = AdapterError(
                path, f"internal error in the {adapter} adapter while reading this file ({detail}); "
                "please report it with the file"
            )
            error.internal = True
    error.translated_from = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return error


@contextlib.contextmanager
def reading(adapter: "InputAdapter | str", source: Any, *, time_budget_s: float | None = None) -> Iterator[None]:
    """The state and error translation of one ``load``: see :func:`guarded_load`."""
    name = adapter if isinstance(adapter, str) else adapter.name
    libraries = {} if isinstance(adapter, str) else dict(getattr(adapter, "data_error_libraries", {}))
    budget = time_budget_s if time_budget_s is not None else getattr(adapter, "time_budget_s", None)
    state = _ReadState(name, _describe(source), budget)
    token = _READ_STATE.set(state)
    try:
        yield
    except LongLLaVAError:
        raise
    except Exception as exc:  # noqa: BLE001 - the one translation point of this adapter
        raise translate_error(exc, state.file or state.source, name, libraries) from exc
    finally:
        _READ_STATE.reset(token)


_F = TypeVar("_F", bound=Callable[..., Any])


def guarded_load(method: _F) -> _F:
    """Decorate an adapter's ``load``: only the SDK's typed errors leave it.

    Inside, :func:`confine` records the file being read, :func:`check_time_budget` enforces
    the adapter's ``time_budget_s``, and any exception that is not a
    :class:`~longllava_sdk.errors.LongLLaVAError` becomes an
    :class:`~longllava_sdk.errors.AdapterError` naming that file (the source when no file was
    opened yet) with the original exception as ``__cause__``; ``MemoryError`` becomes a
    :class:`~longllava_sdk.errors.ResourceLimitError`, ``ModuleNotFoundError`` a
    :class:`~longllava_sdk.errors.MissingDependencyError`.
    """

    @functools.wraps(method)
    def load(self: InputAdapter, source: Any, *args: Any, **kwargs: Any) -> Any:
        with reading(self, source):
            return method(self, source, *args, **kwargs)

    load.__longllava_guarded__ = True  # type: ignore[attr-defined]
    return load  # type: ignore[return-value]


def guarded_claims(function: _F) -> _F:
    """Decorate an adapter's ``claims`` (below ``@classmethod``): a file the sniff cannot read is
    not claimed (``False``); typed SDK errors (a file outside the :func:`allowed_root`) pass."""

    @functools.wraps(function)
    def claims(cls: type[InputAdapter], path: Path) -> bool:
        try:
            return bool(function(cls, path))
        except LongLLaVAError:
            raise
        except Exception:  # noqa: BLE001 - an unreadable file is simply not claimed
            return False

    claims.__longllava_guarded__ = True  # type: ignore[attr-defined]
    return claims  # type: ignore[return-value]


def check_time_budget(where: str = "") -> None:
    """Raise :class:`ResourceLimitError` when the current load used more CPU time than its budget.

    Adapters call it between slices, frames, tiles and files (a single decode call is not
    interrupted). The clock is the CPU time of the thread running ``load``.
    """
    state = _READ_STATE.get()
    if state is None or state.budget is None:
        return
    used = time.thread_time() - state.started
    if used > state.budget:
        at = f" (stopped {where})" if where else ""
        raise ResourceLimitError(
            state.file or state.source,
            f"reading used more than time_budget_s={state.budget:g} s of CPU time{at}; pass "
            f"{adapter_option_hint('time_budget_s', 'SECONDS')} to allow more",
        )


def sample_indices(total: int, budget: int | None) -> list[int]:
    """Evenly spaced indices into ``range(total)``, at most ``budget`` of them.

    The first and last index are always kept (the first and last slice of a volume, the first
    and last frame of a clip); the rest are spread uniformly. ``budget=None`` keeps all.
    """
    if total <= 0:
        return []
    if budget is None or budget >= total:
        return list(range(total))
    if budget < 1:
        raise ValueError(f"max_images must be >= 1, got {budget}")
    if budget == 1:
        return [0]
    step = (total - 1) / (budget - 1)
    return sorted({round(i * step) for i in range(budget)})


def single_source(source: Source, adapter_name: str) -> str | os.PathLike[str]:
    """The one path of ``source`` for adapters that read a single file (a 1-item list is accepted)."""
    if isinstance(source, (list, tuple)):
        if len(source) != 1:
            raise AdapterError(str(source[0]) if source else "<empty list>", f"the {adapter_name} adapter reads one file")
        return source[0]
    return source


# -- option parsing helpers -------------------------------------------------------------------

def _type_hints(func: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to raw annotations
        return dict(getattr(func, "__annotations__", {}))


def _describe_type(annotation: Any) -> str:
    """A type hint as a short, readable string (``str | tuple[float, float] | None``)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe_type(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        inner = ", ".join("..." if a is Ellipsis else _describe_type(a) for a in args)
        return f"{name}[{inner}]" if inner else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _arg_docs(doc: str) -> dict[str, str]:
    """``{name: text}`` from a Google-style ``Args:`` section."""
    docs: dict[str, str] = {}
    current = None
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Options:"):
            in_args, current = True, None
            continue
        if not in_args:
            continue
        match = re.match(r"^\s{4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
        if match:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif line.startswith("        ") and current:
            docs[current] += " " + line.strip()
        elif line.strip():
            in_args = False
    return docs


_NONE_WORDS = {"none", "null", ""}


@functools.lru_cache(maxsize=256)
def _adapter_for(annotation: Any) -> TypeAdapter[Any] | None:
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # noqa: BLE001 - a type pydantic cannot build a validator for: the adapter parses it
        return None


def _accepts(annotation: Any, test: Callable[[Any], bool]) -> bool:
    return test(annotation) or any(_accepts(arg, test) for arg in typing.get_args(annotation)
                                   if typing.get_origin(annotation) in (typing.Union, types.UnionType))


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and origin is not str and issubclass(origin, collections.abc.Sequence)


def _scalar(item: Any) -> Any:
    try:
        return json.loads(item) if isinstance(item, str) else item
    except ValueError:
        return item


def _parse_text(text: str, annotation: Any) -> Any:
    """Parse ``text`` (a CLI flag, a CSV cell) as a value of ``annotation``, with pydantic.

    ``none`` / ``null`` / empty text is ``None`` for optional options; for options that take a
    sequence, comma-separated text or a JSON list is a list (its items read as numbers where
    they are numbers); everything else is pydantic's lax reading (``yes`` -> ``True``,
    ``"12"`` -> ``12``).

    Raises:
        pydantic.ValidationError: the text does not read as the declared type.
    """
    if _accepts(annotation, lambda a: a is type(None)) and text.strip().lower() in _NONE_WORDS:
        return None
    validator = _adapter_for(annotation)
    if validator is None:
        return text
    stripped = text.strip()
    candidates: list[Any] = [text]
    if _accepts(annotation, _is_sequence) and ("," in stripped or stripped.startswith("[")):
        try:
            items = json.loads(stripped) if stripped.startswith("[") else \
                [part.strip() for part in stripped.split(",") if part.strip()]
        except ValueError:
            items = None
        if isinstance(items, list):
            candidates = [[_scalar(item) for item in items], items, text]
    for candidate in candidates[:-1]:
        try:
            return validator.validate_python(candidate)
        except ValidationError:
            continue
    return validator.validate_python(candidates[-1])


def _describe(source: Any) -> str:
    if isinstance(source, (list, tuple)):
        return f"{source[0]} (+{len(source) - 1} more)" if source else "<empty list>"
    try:
        return os.fspath(source)
    except TypeError:
        return repr(source)
