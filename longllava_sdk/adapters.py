"""Input adapters: the base class every adapter plugin subclasses, and adapter lookup.

An adapter is registered through the ``longllava_register_adapters`` hook (see
:mod:`longllava_sdk.hookspecs`), built-ins exactly like third-party ones. The
:class:`~longllava_sdk.Pipeline` and the trainer pick the adapter for a source by explicit
name, else by asking each adapter whether it :meth:`~InputAdapter.claims` the path
(extension first, then a cheap header sniff).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Sequence

from .errors import AdapterError, UnsupportedSourceError
from .media import Media, MediaKind

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


def available_adapters() -> dict[str, type[InputAdapter]]:
    """All adapters registered through the plugin manager, by name."""
    from .plugin_manager import get_plugin_manager

    # Plugin by plugin: one broken plugin must not hide the others' adapters.
    return get_plugin_manager().registered_classes("longllava_register_adapters", InputAdapter, "adapter")


def resolve_adapter(source: Source, adapter: str | None = None, **options: Any) -> InputAdapter:
    """Instantiate the adapter for ``source``: the one named ``adapter``, else the first that claims it."""
    adapters = available_adapters()
    if adapter is not None:
        if adapter not in adapters:
            raise UnsupportedSourceError(
                _describe(source), f"no adapter named {adapter!r}; installed: {', '.join(sorted(adapters))}"
            )
        return adapters[adapter](**options)
    first = Path(source[0] if isinstance(source, (list, tuple)) else source)
    for adapter_cls in sorted(adapters.values(), key=lambda a: (a.priority, a.name)):
        if adapter_cls.claims(first):
            return adapter_cls(**options)
    raise UnsupportedSourceError(
        _describe(source),
        f"no installed adapter claims this source (installed: {', '.join(sorted(adapters))}); "
        "pass adapter=NAME to choose one",
    )


def _describe(source: Source) -> str:
    if isinstance(source, (list, tuple)):
        return f"{source[0]} (+{len(source) - 1} more)" if source else "<empty list>"
    return str(source)
