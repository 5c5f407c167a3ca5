"""The registry: what the installed plugins provide, looked up by name or by contract.

Every look-up of the SDK lives here, so the engine never names a built-in:
:func:`available_adapters` / :func:`resolve_adapter` (adapters chosen by name or by
:attr:`~longllava_sdk.adapters.InputAdapter.kind`), :func:`available_heads` /
:func:`get_head_class`, :func:`available_importers`, :func:`available_exporters`,
:func:`available_commands`. Loading the plugins and isolating their
faults is :mod:`longllava_sdk.plugin_manager`'s job; a miss is worded once, by
:func:`~longllava_sdk.errors.unknown_name_error` ("did you mean ...?").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

from .errors import (
    ConfigError,
    LongLLaVAError,
    UnsupportedSourceError,
    option_hint,
    unknown_name_error,
    unknown_name_message,
)
from .local_files import refuse_special
from .plugin_manager import BLOCK_ENV, LongLLaVAPluginManager, get_plugin_manager, warn_plugin

if TYPE_CHECKING:  # the base classes import torch / PIL: loaded only when a look-up needs them
    from .adapters import InputAdapter
    from .heads import TaskHead
    from .exporters import Exporter
    from .importers import Importer

__all__ = [
    "available_adapters", "available_heads", "available_importers", "available_exporters", "available_commands", "get_head_class", "resolve_adapter",
    "claiming_adapter", "registered_classes", "unknown_name_error",
]

T = TypeVar("T")
SourceLike = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def registered_classes(hook_name: str, base: type[T], what: str,
                       pm: LongLLaVAPluginManager | None = None) -> dict[str, type[T]]:
    """Classes returned by a ``longllava_register_*`` hook, by their ``name`` attribute.

    Plugin by plugin (one broken plugin must not hide the others' classes): anything that is
    not a subclass of ``base`` with a string ``name`` is skipped with a warning naming the
    plugin and its distribution. When two plugins register the same name, the first in
    hook-call order wins and a warning names both. ``pm``: another manager than the process-wide one.
    """
    pm = pm or get_plugin_manager()
    found: dict[str, type[T]] = {}
    owners: dict[str, str] = {}
    for plugin_name, batch in pm.collect(hook_name):
        who = pm.describe_plugin(plugin_name)
        if not isinstance(batch, (list, tuple)):
            warn_plugin(f"{who}: {hook_name} must return a list of {what} classes, got {type(batch).__name__}; "
                        "skipped")
            continue
        for cls in batch:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                warn_plugin(f"{who}: {hook_name} returned {cls!r}, which is not a subclass of "
                            f"{base.__module__}.{base.__qualname__}; skipped")
                continue
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                warn_plugin(f"{who}: {what} class {cls.__qualname__} has no string `name` class attribute; skipped")
                continue
            if name in found:
                if found[name] is not cls:
                    warn_plugin(f"{what} name {name!r} is registered by plugins {owners[name]!r} and "
                                f"{plugin_name!r}; using the one from {owners[name]!r} (block the other with "
                                f"{BLOCK_ENV})")
                continue
            found[name], owners[name] = cls, plugin_name
    return found


def available_adapters(kind: str | None = None) -> dict[str, type[InputAdapter]]:
    """Installed input adapters by name (only those of ``kind`` when given), built-ins included."""
    from .adapters import InputAdapter

    found = registered_classes("longllava_register_adapters", InputAdapter, "adapter")
    return {name: cls for name, cls in found.items() if kind is None or cls.kind == kind}


def available_heads() -> dict[str, type[TaskHead]]:
    """Installed task heads by name, built-ins included."""
    from .heads import TaskHead

    return registered_classes("longllava_register_heads", TaskHead, "head")


def get_head_class(name: str) -> type[TaskHead]:
    """The installed head called ``name``; the error lists the installed ones (and the closest)."""
    heads = available_heads()
    if name not in heads:
        raise unknown_name_error("head", name, heads, listing="installed heads",
                                 hint="(a plugin adds more through longllava_register_heads)")
    return heads[name]


def available_importers() -> dict[str, type[Importer]]:
    """Installed dataset importers (``data import`` formats) by name, built-ins included."""
    from .importers import Importer

    return registered_classes("longllava_register_importers", Importer, "importer")


def available_exporters() -> dict[str, type[Exporter]]:
    """Installed answer exporters (``export NAME`` / ``infer --export NAME``) by name, built-ins included."""
    from .exporters import Exporter

    return registered_classes("longllava_register_exporters", Exporter, "exporter")


def available_commands() -> dict[str, Callable[..., Any]]:
    """CLI commands by name (``snake_case`` function names become ``kebab-case``).

    Built-in commands come through the same hook as any plugin's. When two plugins register
    the same name, the first in hook-call order wins and a warning names both.
    """
    commands: dict[str, Callable[..., Any]] = {}
    owners: dict[str, str] = {}
    for plugin_name, batch in get_plugin_manager().collect("longllava_register_commands"):
        for func in batch or ():
            name = getattr(func, "command_name", None) or func.__name__.replace("_", "-")
            if name in commands and commands[name] is not func:
                warn_plugin(f"command {name!r} is registered by plugins {owners[name]!r} and {plugin_name!r}; using "
                            f"the one from {owners[name]!r} (block the other with {BLOCK_ENV})")
                continue
            commands[name], owners[name] = func, plugin_name
    return commands


def resolve_adapter(source: SourceLike, adapter: str | None = None, *, kind: str | None = None,
                    options: Mapping[str, Any] | None = None) -> InputAdapter:
    """The adapter that reads ``source``, configured with ``options``: the one place this is decided.

    Args:
        source: a path, or a list of paths (the first decides).
        adapter: an adapter name: that adapter, whatever ``claims`` says.
        kind: consider only adapters of this media kind (``images``, ``video``, ``volume``,
            ``tiled`` or a plugin's own kind); ``None`` considers all.
        options: adapter options; text values are converted by the adapter's declared types.

    When no adapter of the kind claims the source, each is asked to read it anyway (one image):
    one that can is used; otherwise the error says, adapter by adapter, why it declined.

    Raises:
        UnsupportedSourceError: unknown adapter name (the closest installed one suggested),
            an adapter of another kind, or no adapter that can read the source.
        ConfigError: options the adapter does not declare or cannot parse.
    """
    where = _describe_source(source)
    for path in (source if isinstance(source, (list, tuple)) else [source]):
        refuse_special(path)  # a FIFO, socket or device: no adapter is asked (opening one could block)
    adapters = available_adapters()
    if adapter is not None:
        if adapter not in adapters:
            raise UnsupportedSourceError(where, unknown_name_message("adapter", adapter, adapters,
                                                                     listing="installed"))
        cls = adapters[adapter]
        if kind is not None and cls.kind != kind:
            raise UnsupportedSourceError(where, f"adapter {adapter!r} reads {cls.kind} sources, not {kind}")
        return _instantiate(cls, options)
    candidates = _candidates(adapters, kind)
    if not candidates:
        raise UnsupportedSourceError(where, f"no installed adapter reads {kind} sources (installed: "
                                            f"{', '.join(f'{n} ({c.kind})' for n, c in sorted(adapters.items()))})")
    claimant = _first_claimant(candidates, source)
    if claimant is not None:
        return _instantiate(claimant, options)
    reasons = []
    for cls in candidates:  # nobody recognised it cheaply: let each say why it cannot read it
        try:
            instance = _instantiate(cls, options)
            instance.load(source, max_images=1)
        except LongLLaVAError as exc:
            reasons.append(f"{cls.name}: {getattr(exc, 'problem', None) or exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a third-party adapter's untyped failure is still a reason
            reasons.append(f"{cls.name}: {type(exc).__name__}: {exc}")
            continue
        return instance
    what = f"{kind} " if kind else ""
    raise UnsupportedSourceError(where, f"no {what}adapter can read this source: " + "; ".join(reasons)
                                 + f" (choose one with {option_hint('adapter', 'NAME')})")


def claiming_adapter(source: SourceLike, kind: str | None = None) -> type[InputAdapter] | None:
    """The first adapter (of ``kind``, by priority then name) whose ``claims`` accepts ``source``."""
    return _first_claimant(_candidates(available_adapters(), kind), source)


def _candidates(adapters: Mapping[str, type[InputAdapter]], kind: str | None) -> list[type[InputAdapter]]:
    return sorted((c for c in adapters.values() if kind is None or c.kind == kind), key=lambda c: (c.priority, c.name))


def _first_claimant(candidates: Sequence[type[InputAdapter]], source: SourceLike) -> type[InputAdapter] | None:
    first = Path(source[0] if isinstance(source, (list, tuple)) and source else source)  # type: ignore[arg-type]
    for cls in candidates:
        try:
            if cls.claims(first):
                return cls
        except Exception:  # noqa: BLE001 - a broken claims() must not hide the other adapters
            continue
    return None


def _instantiate(cls: type[InputAdapter], options: Mapping[str, Any] | None) -> InputAdapter:
    coerced = cls.coerce_options(options)
    try:
        return cls(**coerced)
    except LongLLaVAError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"adapter {cls.name!r} rejects options {coerced}: {exc}") from exc


def _describe_source(source: SourceLike) -> str:
    if isinstance(source, (list, tuple)):
        return f"{source[0]} (+{len(source) - 1} more)" if source else "<empty list>"
    return os.fspath(source)
