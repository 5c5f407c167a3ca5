"""The plugin manager: finds, validates and tracks every plugin of the SDK, and looks things up.

Plugins (built-in ones included) are Python modules or objects with ``@hookimpl`` functions
(see :mod:`longllava_sdk.hookspecs`), announced by an installed distribution in the
entry-point group ``longllava_sdk``::

    [project.entry-points.longllava_sdk]
    my_plugin = "my_package.plugin"

:func:`get_plugin_manager` loads them all once per process. Loading is fault-isolating: a
plugin that fails to import, or that violates a hookspec (an unknown hook name, an argument
the hook does not pass), is skipped with a :class:`PluginLoadWarning` naming it, recorded
with its error, and every other plugin keeps working. ``longllava-sdk plugins`` shows the
result (see :func:`list_plugins`).

Looking things up (adapters, heads, commands) is :mod:`longllava_sdk.registry`'s job.

Environment variables:

* ``LONGLLAVA_SDK_BLOCK_PLUGINS=name1,name2``: never load these plugins (entry-point names
  or distribution names); same as ``get_plugin_manager(block=[...])``.
* ``LONGLLAVA_SDK_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points at all; only plugins
  registered in code with ``get_plugin_manager().register(obj, name=...)`` are used.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
import threading
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection, Iterable, Literal

import pluggy

from . import hookspecs
from .contracts import describe_owner
from .errors import ConfigError, LongLLaVAError, PluginError, did_you_mean

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BLOCK_ENV = "LONGLLAVA_SDK_BLOCK_PLUGINS"
DISABLE_AUTOLOAD_ENV = "LONGLLAVA_SDK_DISABLE_PLUGIN_AUTOLOAD"

PluginStatus = Literal["loaded", "failed", "rejected", "blocked"]


class PluginLoadWarning(UserWarning):
    """A plugin was skipped (import error, hookspec violation, bad hook result); others still work."""


@dataclass
class PluginRecord:
    """What the manager knows about one plugin, loaded or not.

    Attributes:
        name: the plugin name (entry-point name, or the name given to ``register``).
        status: ``loaded``; ``failed`` (import error, entry-point name taken); ``rejected``
            (violates a hookspec); ``blocked`` (by name or distribution).
        hooks: names of the hooks it implements (empty unless loaded).
        version: version of the distribution that provides it (``__version__`` for
            programmatic plugins, when they have one).
        distribution: the distribution that declares the entry point; ``None`` for
            programmatic plugins.
        entry_point: the entry-point target, e.g. ``my_package.plugin`` or ``pkg.mod:obj``.
        module_file: the file the plugin's code lives in, when known.
        error: why it is not loaded (``failed`` / ``rejected``), or, for a loaded plugin, the
            last exception one of its registration hooks raised (its answer was skipped).
        details: the traceback of ``error``, for debugging the plugin.
    """

    name: str
    status: PluginStatus
    hooks: list[str] = field(default_factory=list)
    version: str | None = None
    distribution: str | None = None
    entry_point: str | None = None
    module_file: str | None = None
    error: str | None = None
    details: str | None = None

    @property
    def source(self) -> str:
        """Where the plugin came from: ``distribution <name>`` or ``programmatic``."""
        return f"distribution {self.distribution}" if self.distribution else "programmatic"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``source`` included)."""
        return {**asdict(self), "source": self.source}


class LongLLaVAPluginManager(pluggy.PluginManager):
    """``pluggy.PluginManager`` for project ``longllava_sdk`` with load isolation and records.

    Args:
        block: plugin names (entry-point names) or distribution names never to load, added
            to those in ``LONGLLAVA_SDK_BLOCK_PLUGINS``.
        autoload: load the ``longllava_sdk`` entry points; ``None`` means yes unless
            ``LONGLLAVA_SDK_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
    """

    def __init__(self, *, block: Iterable[str] = (), autoload: bool | None = None) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self._records: list[PluginRecord] = []
        self._blocked_dists: set[str] = set()
        self.autoload = autoload_enabled() if autoload is None else bool(autoload)
        self.block(*blocked_from_env(), *block)
        if self.autoload:
            self.load_entry_points()

    # -- blocking -------------------------------------------------------------------------

    def block(self, *names: str) -> None:
        """Block plugins by plugin name or distribution name; unregisters any already loaded."""
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            self._blocked_dists.add(_normalize_dist(name))
            for record in self._records:
                if record.status == "loaded" and record.distribution and \
                        _normalize_dist(record.distribution) == _normalize_dist(name):
                    self.set_blocked(record.name)
            self.set_blocked(name)

    def set_blocked(self, name: str) -> None:
        for record in self._records:  # before unregistering, so the record stays listed
            if record.name == name and record.status == "loaded":
                record.status, record.hooks = "blocked", []
        super().set_blocked(name)

    def is_blocked_distribution(self, dist_name: str | None) -> bool:
        """Whether every plugin of distribution ``dist_name`` is blocked."""
        return dist_name is not None and _normalize_dist(dist_name) in self._blocked_dists

    # -- registration ---------------------------------------------------------------------

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register ``plugin`` (a module, class or instance with ``@hookimpl`` functions).

        Returns the plugin name, or ``None`` when that name is blocked.

        Raises:
            PluginError: the plugin violates a hookspec (it is left unregistered) or the name
                is taken by another plugin.
        """
        return self._register_validated(plugin, name, origin=None)

    def unregister(self, plugin: Any | None = None, name: str | None = None) -> Any | None:
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin=plugin, name=name)
        if removed is not None:
            self._records = [r for r in self._records if not (r.status == "loaded" and r.name == name)]
        return removed

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Import and register every entry point of ``group``; returns how many loaded.

        Entry points load in a stable order (distribution, then entry-point name). A failure
        in one is recorded, warned about by name, and does not stop the others.
        """
        entry_points = sorted(
            importlib.metadata.entry_points(group=group),
            key=lambda ep: (_dist_name(ep) or "", ep.name),
        )
        loaded = 0
        for ep in entry_points:
            dist = _dist_name(ep)
            record = PluginRecord(
                name=ep.name, status="loaded", distribution=dist,
                version=ep.dist.version if ep.dist is not None else None, entry_point=ep.value,
            )
            if self.is_blocked(ep.name) or self.is_blocked_distribution(dist):
                record.status = "blocked"
                self._add_record(record)
                continue
            if self.has_plugin(ep.name):
                owner = self._record_for(ep.name)
                if owner is not None and owner.entry_point == ep.value:
                    continue  # the same entry point seen twice on sys.path
                self._fail(record, "failed", PluginError(
                    f"entry point name {ep.name!r} is already used by plugin from "
                    f"{owner.source if owner else 'another plugin'}; entry-point names must be unique"
                ))
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure is isolated
                self._fail(record, "failed", exc, f"failed to import {ep.value!r}")
                continue
            try:
                self._register_validated(plugin, ep.name, origin=record)
            except PluginError as exc:
                self._fail(record, "rejected", exc)
                continue
            loaded += 1
        self.check_pending()  # every registered hookimpl has a spec (validated above)
        return loaded

    def _register_validated(self, plugin: Any, name: str | None, origin: PluginRecord | None) -> str | None:
        plugin_name = name or self.get_canonical_name(plugin)
        record = origin or PluginRecord(
            name=plugin_name, status="loaded", version=_plugin_version(plugin),
        )
        record.module_file = record.module_file or _module_file(plugin)
        if self.is_blocked(plugin_name):
            record.status = "blocked"
            if origin is not None or not any(r.name == plugin_name for r in self._records):
                self._add_record(record)
            return None
        try:
            registered = super().register(plugin, plugin_name)
        except pluggy.PluginValidationError as exc:
            # pluggy adds hookimpls one by one, so some may already be in: take them all out.
            self._discard(plugin, plugin_name)
            raise PluginError(self._describe_violation(plugin_name, exc)) from exc
        except ValueError as exc:  # name or object already registered
            raise PluginError(f"cannot register plugin {plugin_name!r}: {exc}") from exc
        if registered is None:
            record.status = "blocked"
            self._add_record(record)
            return None
        unknown = self._unknown_hooks(plugin)
        if unknown:
            self._discard(plugin, plugin_name)
            raise PluginError(
                f"plugin {plugin_name!r} implements unknown hook(s): "
                + "; ".join(_describe_unknown(hook) for hook in unknown)
            )
        record.hooks = self._hook_names(plugin)
        record.status = "loaded"
        self._add_record(record)
        unmarked = _unmarked_hook_functions(plugin, set(record.hooks))
        if unmarked:
            warn_plugin(f"plugin {plugin_name!r} defines {', '.join(unmarked)} without @hookimpl; "
                        "the SDK ignores these functions (decorate them with longllava_sdk.hookimpl)")
        return registered

    def _describe_violation(self, plugin_name: str, exc: pluggy.PluginValidationError) -> str:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        match = re.search(r"hook '(\w+)'", lines[0]) if lines else None
        if match is None:
            return f"plugin {plugin_name!r} violates a hookspec: {'; '.join(lines)}"
        spec = getattr(self.hook, match.group(1)).spec
        return (f"plugin {plugin_name!r} violates the hookspec of {match.group(1)}"
                f"({', '.join(spec.argnames) if spec else ''}): {'; '.join(lines[1:])}")

    def _add_record(self, record: PluginRecord) -> None:
        """Keep one record per plugin: a reload replaces an earlier failed / blocked record."""
        self._records = [r for r in self._records if r.status == "loaded" or
                         (r.name, r.distribution) != (record.name, record.distribution)]
        self._records.append(record)

    def _unknown_hooks(self, plugin: Any) -> list[str]:
        unknown = []
        for caller in self.get_hookcallers(plugin) or ():
            if caller.has_spec():
                continue
            if any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls()):
                unknown.append(caller.name)
        return unknown

    def _discard(self, plugin: Any, name: str) -> None:
        """Undo a partial registration, leaving no trace of the plugin's hookimpls."""
        if self.get_plugin(name) is plugin:
            callers = self.get_hookcallers(plugin) or []
            pluggy.PluginManager.unregister(self, plugin=plugin, name=name)
            for caller in callers:  # hook names only this plugin invented
                if not caller.has_spec() and not caller.get_hookimpls():
                    delattr(self.hook, caller.name)

    def _fail(self, record: PluginRecord, status: PluginStatus, exc: BaseException, what: str = "") -> None:
        record.status, record.hooks = status, []
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PluginError) else str(exc)
        record.error = f"{what}: {message}" if what else message
        record.details = "".join(traceback.format_exception(exc)).rstrip()
        self._add_record(record)
        where = f" (distribution {record.distribution} {record.version})" if record.distribution else ""
        warn_plugin(
            f"longllava_sdk plugin {record.name!r}{where} was skipped, the other plugins still work: "
            f"{record.error}. Fix or uninstall it, or block it with {BLOCK_ENV}={record.name}"
        )

    # -- introspection --------------------------------------------------------------------

    def _hook_names(self, plugin: Any) -> list[str]:
        return sorted(caller.name for caller in self.get_hookcallers(plugin) or ())

    def _record_for(self, name: str) -> PluginRecord | None:
        for record in self._records:
            if record.name == name and record.status == "loaded":
                return record
        return None

    def list_plugins(self) -> list[PluginRecord]:
        """Records of every plugin seen: loaded ones first, then skipped ones, each by name."""
        for record in self._records:
            if record.status == "loaded":
                plugin = self.get_plugin(record.name)
                record.hooks = self._hook_names(plugin) if plugin is not None else []
        order = {"loaded": 0, "failed": 1, "rejected": 2, "blocked": 3}
        return sorted(self._records, key=lambda r: (order[r.status], r.name, r.distribution or ""))

    @property
    def load_errors(self) -> list[PluginRecord]:
        """Records of plugins that failed to load or were rejected."""
        return [r for r in self.list_plugins() if r.status in ("failed", "rejected")]

    def raise_for_errors(self) -> None:
        """Raise :class:`PluginError` listing every failed or rejected plugin (strict mode)."""
        errors = self.load_errors
        if errors:
            raise PluginError(
                f"{len(errors)} plugin(s) could not be loaded:\n  "
                + "\n  ".join(f"{r.name} ({r.source}): {r.error}" for r in errors)
            )

    def collect(self, hook_name: str, *, only: Collection[str] | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call a hook plugin by plugin: ``(plugin name, result)`` in call order.

        Unlike ``pm.hook.<name>(...)`` this isolates plugins: an implementation that raises is
        skipped with a :class:`PluginLoadWarning` naming the plugin, and the others still
        answer. ``None`` results are dropped. Hooks with wrapper implementations are called
        normally (attributed to ``"*"``) so that the wrappers run. ``only``: call the
        implementations of these plugins only (the others do not run).
        """
        return self._answers(hook_name, kwargs, strict=None, only=only)

    def call_checked(self, hook_name: str, *, returns: str, check: Callable[[Any], bool],
                     firstresult: bool = False, **kwargs: Any) -> list[Any] | Any:
        """Call a run-time hook implementation by implementation, holding each to its contract.

        Unlike :meth:`collect` nothing is skipped: an implementation that raises, or whose
        answer fails ``check`` (``returns`` says what was due), ends the call with one
        :class:`PluginError` naming its distribution, its function and the hook, before the
        engine uses any answer. Returns the answers in pluggy's call order (``None`` dropped),
        or with ``firstresult`` the first non-``None`` one (``None`` when there is none).
        """
        answers = [answer for _, answer in self._answers(hook_name, kwargs, strict=(returns, check),
                                                         first=firstresult)]
        return (answers[0] if answers else None) if firstresult else answers

    def _answers(self, hook_name: str, kwargs: dict[str, Any], strict: tuple[str, Callable[[Any], bool]] | None,
                 first: bool = False, only: Collection[str] | None = None) -> list[tuple[str, Any]]:
        """The one loop over a hook's implementations: isolated (``strict=None``: a failure is
        warned about and skipped) or held to a contract (``strict=(returns, check)``)."""
        caller = getattr(self.hook, hook_name, None)
        if caller is None or not caller.has_spec():
            raise PluginError(f"unknown hook {hook_name!r}; known hooks: {', '.join(hook_names())}")
        if set(caller.spec.argnames) != set(kwargs):
            raise TypeError(f"hook {hook_name} takes {caller.spec.argnames}, got {sorted(kwargs)}")
        impls = caller.get_hookimpls()
        if only is not None:
            impls = [impl for impl in impls if impl.plugin_name in only]
        if only is None and any(impl.wrapper or impl.hookwrapper for impl in impls):  # wrappers see every answer
            result = caller(**kwargs)
            results = [result] if first or not isinstance(result, list) else result
            answers = [("*", r) for r in results if r is not None]
            if strict is not None and not all(strict[1](r) for _, r in answers):
                raise PluginError(f"{hook_name} (wrapped) returned {answers!r}; it must return {strict[0]}")
            return answers
        answers = []
        for impl in reversed(impls):  # pluggy's call order: last registered / tryfirst first
            function = impl.function

            def blame(problem: str) -> PluginError:
                return PluginError(f"{describe_owner(function)} (plugin {impl.plugin_name!r}): {function.__module__}."
                                   f"{function.__qualname__} {problem} (see docs/plugin_hooks.md#{hook_name})")

            try:
                result = function(*(kwargs[arg] for arg in impl.argnames))
            except LongLLaVAError if strict is not None else ():  # the SDK's own errors pass unchanged
                raise
            except Exception as exc:  # noqa: BLE001 - attributed to the plugin
                if strict is not None:
                    raise blame(f"raised {type(exc).__name__}: {exc}") from exc
                record = self._record_for(impl.plugin_name)
                message = f"hook {hook_name} raised {type(exc).__name__}: {exc}"
                if record is not None:
                    record.error, record.details = message, "".join(traceback.format_exception(exc)).rstrip()
                warn_plugin(f"longllava_sdk plugin {impl.plugin_name!r}: {message}; its answer is skipped")
                continue
            if result is None and (strict is None or first):
                continue
            if strict is not None and not strict[1](result):
                shown = "None" if result is None else f"a {type(result).__module__}.{type(result).__qualname__}"
                raise blame(f"returned {shown}; {hook_name} must return {strict[0]}")
            answers.append((impl.plugin_name, result))
            if first:
                break
        return answers

    def describe_plugin(self, name: str) -> str:
        """``plugin 'x' (distribution pkg 1.0)`` or ``plugin 'x' (programmatic)``: who to blame in messages."""
        record = self._record_for(name)
        if record is None or record.distribution is None:
            return f"plugin {name!r}"
        return f"plugin {name!r} (distribution {record.distribution} {record.version or ''})".replace(" )", ")")


# -- module-level API ---------------------------------------------------------------------

_lock = threading.RLock()
_manager: LongLLaVAPluginManager | None = None


def create_plugin_manager(block: Iterable[str] = (), autoload: bool | None = None) -> LongLLaVAPluginManager:
    """A new, uncached plugin manager (see :class:`LongLLaVAPluginManager` for the arguments)."""
    return LongLLaVAPluginManager(block=block, autoload=autoload)


def get_plugin_manager(block: Iterable[str] | None = None, autoload: bool | None = None) -> LongLLaVAPluginManager:
    """The process-wide plugin manager, created (and entry points loaded) on first use.

    Args:
        block: plugin or distribution names to block, in addition to
            ``LONGLLAVA_SDK_BLOCK_PLUGINS``; on an existing manager they are unregistered.
        autoload: whether to load entry points (default: yes unless
            ``LONGLLAVA_SDK_DISABLE_PLUGIN_AUTOLOAD`` is set). Only honoured when the manager
            is created; asking for a different value later raises :class:`ConfigError`.
    """
    global _manager
    with _lock:
        if _manager is None:
            _manager = create_plugin_manager(block=block or (), autoload=autoload)
        else:
            if autoload is not None and bool(autoload) != _manager.autoload:
                raise ConfigError(
                    f"the plugin manager already exists with autoload={_manager.autoload}; call "
                    "longllava_sdk.plugin_manager.reset_plugin_manager() before asking for "
                    f"autoload={bool(autoload)}"
                )
            if block:
                _manager.block(*block)
        return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager; the next :func:`get_plugin_manager` builds a new one."""
    global _manager
    with _lock:
        _manager = None


def list_plugins(pm: LongLLaVAPluginManager | None = None) -> list[PluginRecord]:
    """Records of every plugin the (process-wide) manager has seen, loaded or not."""
    return (pm or get_plugin_manager()).list_plugins()


def hook_names() -> list[str]:
    """Names of all hooks in :mod:`longllava_sdk.hookspecs`."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, marker))


def blocked_from_env() -> list[str]:
    """Names listed in ``LONGLLAVA_SDK_BLOCK_PLUGINS`` (comma- or whitespace-separated)."""
    return [n for n in re.split(r"[,\s]+", os.environ.get(BLOCK_ENV, "")) if n]


def autoload_enabled() -> bool:
    """False when ``LONGLLAVA_SDK_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value."""
    value = os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower()
    return value in ("", "0", "false", "no", "off")


# -- helpers ------------------------------------------------------------------------------

_warning_registry: dict[Any, Any] = {}


def warn_plugin(message: str) -> None:
    """Warn once per process with a :class:`PluginLoadWarning` (a plugin misbehaves; others still work)."""
    # Attributed to a pseudo-file: the SDK line that noticed the problem would only distract.
    # The registry shows each distinct message once per process (adapters are looked up per
    # sample, so a broken plugin would otherwise warn thousands of times).
    warnings.warn_explicit(message, PluginLoadWarning, filename="<longllava_sdk plugins>", lineno=0,
                           module="longllava_sdk.plugin_manager", registry=_warning_registry)


def _normalize_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_name(ep: importlib.metadata.EntryPoint) -> str | None:
    return ep.dist.metadata["Name"] if ep.dist is not None else None


def _plugin_version(plugin: Any) -> str | None:
    version = getattr(plugin, "__version__", None)
    return str(version) if version is not None else None


def _module_file(plugin: Any) -> str | None:
    module = plugin if inspect.ismodule(plugin) else inspect.getmodule(
        plugin if inspect.isclass(plugin) or inspect.isroutine(plugin) else type(plugin))
    return getattr(module, "__file__", None)


def _describe_unknown(name: str) -> str:
    close = did_you_mean(name, hook_names())
    return f"{name!r}" + (f" (did you mean {close!r}?)" if close else "")


def _unmarked_hook_functions(plugin: Any, implemented: set[str]) -> list[str]:
    """Functions named exactly like a hook but missing the ``@hookimpl`` marker."""
    names = []
    for name in hook_names():
        if name not in implemented and inspect.isroutine(getattr(plugin, name, None)):
            names.append(name)
    return names
