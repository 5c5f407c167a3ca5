"""Input adapters: the base class every adapter plugin subclasses.

An adapter is registered through the ``longllava_register_adapters`` hook (see
:mod:`longllava_sdk.hookspecs`), built-ins exactly like third-party ones. Which adapter reads
a source is decided in one place, :func:`longllava_sdk.plugin_manager.resolve_adapter`: the
one named, else among the adapters of the requested :attr:`~InputAdapter.kind` the first
that :meth:`~InputAdapter.claims` the path (extension first, then a cheap header sniff).

An adapter's options are the keyword arguments of its ``__init__``; their type hints are the
contract (:meth:`InputAdapter.options`), so values given as text (``--adapter-option
window=lung`` on the command line, a CSV cell) are converted by :meth:`InputAdapter.coerce_options`.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import os
import re
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from .errors import AdapterError, ConfigError
from .media import Media, MediaKind


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
    """

    name: ClassVar[str]
    kind: ClassVar[MediaKind]
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Lower numbers are asked first when several adapters claim the same path.
    priority: ClassVar[int] = 100

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
        out = {}
        for name, value in options.items():
            if isinstance(value, str):
                try:
                    value = _parse_text(value, hints.get(name, str))
                except ValueError as exc:
                    raise ConfigError(f"adapter {cls.name!r} option {name}={value!r}: expected "
                                      f"{declared[name].annotation} ({exc})") from None
            out[name] = value
        return out

    @abstractmethod
    def load(self, source: Source, *, max_images: int | None = None) -> Media:
        """Read ``source`` into at most ``max_images`` RGB images (``None``: the adapter's default)."""


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


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")


def ensure_local_path(source: str | os.PathLike[str], *, what: str = "file", must_be_file: bool = True) -> Path:
    """The local path of ``source``; URLs, protocols (``http:``, ``rtmp:``...) and GDAL ``/vsi*`` are refused.

    Adapters never touch the network: a source that names a remote or virtual location is an
    :class:`AdapterError` before any library sees it. With ``must_be_file`` a missing path or a
    folder is an error too.
    """
    text = os.fspath(source)
    if _URL.match(text) or text.startswith("/vsi"):
        raise AdapterError(text, f"only local {what}s are read; URLs, protocols and virtual file systems are refused")
    path = Path(text)
    if must_be_file and not path.is_file():
        raise AdapterError(text, "no such file" if not path.exists() else "not a regular file")
    return path


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
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _parse_text(text: str, annotation: Any) -> Any:
    """Parse ``text`` as a value of ``annotation`` (the subset of types adapter options use)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation)]
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in _NONE_WORDS:
            return None
        errors = []
        listish = "," in text or text.strip().startswith("[")
        for candidate in sorted((a for a in args if a is not type(None)), key=lambda a: _parse_order(a, listish)):
            try:
                return _parse_text(text, candidate)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or "no alternative matched")
    if origin is typing.Literal:
        for choice in args:
            if str(choice).lower() == text.strip().lower():
                return choice
        raise ValueError(f"one of {', '.join(map(str, args))}")
    if annotation is bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ValueError("true or false")
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    if origin in _SEQUENCES or annotation in (list, tuple):
        stripped = text.strip()
        items = json.loads(stripped) if stripped.startswith("[") else [p.strip() for p in stripped.split(",") if p.strip()]
        if not isinstance(items, list):
            raise ValueError("a list")
        item_types = [a for a in args if a is not Ellipsis] or [str]
        if origin is tuple and len(item_types) == len(items) and Ellipsis not in args:
            parsed = [_parse_text(str(v), t) if isinstance(v, str) else v for v, t in zip(items, item_types)]
        else:
            parsed = [_parse_text(str(v), item_types[0]) if isinstance(v, str) else v for v in items]
        return tuple(parsed) if origin is tuple or annotation is tuple else parsed
    return text  # str, paths, and types the adapter parses itself


def _parse_order(annotation: Any, listish: bool) -> int:
    """Try the strictest reading first: bool, int, float, literals, then text or a list
    (a list first when the text has commas or brackets)."""
    order = {bool: 0, int: 1, float: 2}
    if annotation in order:
        return order[annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return 3
    if typing.get_origin(annotation) in _SEQUENCES or annotation in (list, tuple):
        return 4 if listish else 6
    return 5
