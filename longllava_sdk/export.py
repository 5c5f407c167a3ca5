"""Exporting an answer: find the exporter by name, check the output, write it atomically.

:func:`export_answer` is what ``longllava-sdk export NAME`` and ``infer --export NAME`` run and
what Python callers use; the contract an exporter implements is
:class:`longllava_sdk.exporters.Exporter`. No torch here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .atomic import atomic_file
from .errors import ConfigError, InputError, option_hint, unknown_name_error
from .exporters import Exporter, ExportResult
from .registry import available_exporters

__all__ = ["list_exporters", "get_exporter", "check_export_target", "export_answer"]


def list_exporters() -> dict[str, type[Exporter]]:
    """Installed exporters by name, built-ins included."""
    return available_exporters()


def get_exporter(name: str) -> type[Exporter]:
    """The installed exporter called ``name``; the error lists the installed ones (and the closest)."""
    found = list_exporters()
    if name not in found:
        raise unknown_name_error("exporter", name, found, listing="installed exporters",
                                 hint="(a plugin adds more through longllava_register_exporters)")
    return found[name]


def check_export_target(exporter: type[Exporter], output: str | os.PathLike[str], *,
                        overwrite: bool = False, flag: str = "output") -> Path:
    """The absolute output path, checked before any work: suffix, not a folder, absent unless ``overwrite``."""
    target = Path(os.path.abspath(os.fspath(output)))
    if target.suffix.lower() not in exporter.suffixes:
        raise ConfigError(f"{target}: {exporter.name} writes {' / '.join(exporter.suffixes)} files; give "
                          f"{option_hint(flag, 'FILE')} one of these suffixes")
    if target.is_dir():
        raise InputError(target, f"is a folder; {option_hint(flag, 'FILE')} names the file to write")
    if target.exists() and not overwrite:
        raise InputError(target, f"already exists; pass {option_hint('overwrite')} to replace it")
    return target


def _resolve_options(exporter: type[Exporter], options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(exporter.options))
    if unknown:
        raise ConfigError(f"exporter {exporter.name!r} takes no option(s) {unknown}; its options: "
                          f"{sorted(exporter.options) or 'none'}")
    return {name: options.get(name, spec.default) for name, spec in exporter.options.items()}


def export_answer(name: str, source: str | os.PathLike[str], answer: str, output: str | os.PathLike[str], *,
                  overwrite: bool = False, **options: Any) -> ExportResult:
    """Export ``answer`` about ``source`` with the exporter ``name``, written atomically to ``output``.

    Raises:
        RegistryLookupError: no exporter of that name (the closest one suggested).
        ConfigError: a wrong output suffix or an option the exporter does not take.
        InputError: the output exists (without ``overwrite``) or is a folder; the source is
            missing or cannot be exported; the answer holds nothing the format can carry.
    """
    exporter_cls = get_exporter(name)
    target = check_export_target(exporter_cls, output, overwrite=overwrite)
    values = _resolve_options(exporter_cls, options)
    source_path = Path(os.path.abspath(os.fspath(source)))
    if not source_path.exists():
        raise InputError(source_path, f"not found (the {exporter_cls.source_option} to export against)")
    if not isinstance(answer, str) or not answer.strip():
        raise InputError(None, "the answer to export is empty")
    exporter = exporter_cls()
    exporter.check_source(source_path)
    with atomic_file(target, overwrite) as temporary:
        result = exporter.export(source_path, answer, temporary, **values)
    result.output = target
    return result
