"""``longllava-sdk plugins``: what the plugin manager loaded, and what it skipped and why."""

from __future__ import annotations

import json as _json
import sys

from ..plugin_manager import BLOCK_ENV, DISABLE_AUTOLOAD_ENV, PluginRecord, get_plugin_manager

_HOOK_PREFIX = "longllava_"


def plugins(json: bool = False, strict: bool = False, adapter: str | None = None) -> int:
    """List installed plugins: name, version, status, hooks implemented, where each came from.

    Plugins that failed to import or violate a hookspec are listed with their error. Block a
    plugin with LONGLLAVA_SDK_BLOCK_PLUGINS=name1,name2; load none from entry points with
    LONGLLAVA_SDK_DISABLE_PLUGIN_AUTOLOAD=1. With --adapter NAME, list that adapter's options
    instead (what --adapter-option KEY=VALUE accepts).

    Args:
        json: print the records as a JSON list instead of a table.
        strict: exit with status 1 when any plugin failed to load or was rejected.
        adapter: show the options, types, defaults and descriptions of this input adapter.
    """
    if adapter is not None:
        return _adapter_options(adapter, json)
    pm = get_plugin_manager()
    records = pm.list_plugins()
    if json:
        print(_json.dumps([r.to_dict() for r in records], indent=2))
    else:
        print(format_table(records))
        if not pm.autoload:
            print(f"\nentry-point autoload is disabled ({DISABLE_AUTOLOAD_ENV} is set)")
        errors = [r for r in records if r.error]
        if errors:
            print("\nerrors:")
            for record in errors:
                print(f"  {record.name}: {record.error}")
            print(f"\nblock a plugin with {BLOCK_ENV}=name1,name2")
    if strict and pm.load_errors:
        print(f"{len(pm.load_errors)} plugin(s) could not be loaded", file=sys.stderr)
        return 1
    return 0


def _adapter_options(name: str, as_json: bool) -> int:
    from ..errors import unknown_name_error
    from ..registry import available_adapters

    adapters = available_adapters()
    if name not in adapters:
        raise unknown_name_error("adapter", name, adapters, listing="installed")
    cls = adapters[name]
    options = cls.options()
    if as_json:
        print(_json.dumps({"adapter": name, "kind": cls.kind, "extensions": list(cls.extensions),
                           "options": [{"name": o.name, "type": o.annotation, "default": o.default, "doc": o.doc}
                                       for o in options.values()]}, indent=2, default=repr))
        return 0
    print(f"adapter {name} (kind {cls.kind}; {', '.join(cls.extensions) or 'any file it claims'})")
    if not options:
        print("  no options")
    for option in options.values():
        print(f"  {option.name}: {option.annotation} = {option.default!r}")
        if option.doc:
            print(f"      {option.doc}")
    print("\npass them with --adapter-option KEY=VALUE (repeatable)")
    return 0


def format_table(records: list[PluginRecord]) -> str:
    """Plain-text table of plugin records, one row per plugin."""
    if not records:
        return "no plugins found"
    header = ("NAME", "VERSION", "STATUS", "HOOKS", "SOURCE")
    rows = [header] + [
        (
            r.name,
            r.version or "-",
            r.status,
            ", ".join(h.removeprefix(_HOOK_PREFIX) for h in r.hooks) or "-",
            r.source + (f" ({r.entry_point})" if r.entry_point else f" ({r.module_file})" if r.module_file else ""),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)
