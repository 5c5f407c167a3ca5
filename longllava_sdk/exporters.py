"""Answer exporters: the contract every ``longllava-sdk export NAME`` plugin implements.

An exporter writes a model's answer about one source back into the format the team's own
systems read: a radiology answer about a DICOM series as a DICOM Structured Report in that
study (``dicom-sr``), a remote-sensing answer with GeoChat boxes about a GeoTIFF scene as
GeoJSON polygons on a map (``geojson``). It is registered through the
``longllava_register_exporters`` hook, built-ins exactly like third-party ones; the engine
(:func:`export_answer`) chooses one by its :attr:`Exporter.name` only.

What the engine does around :meth:`Exporter.export`, whatever the exporter:

* checks the output before any work: a file name with one of :attr:`Exporter.suffixes`,
  not a folder, absent unless ``overwrite``;
* checks the source is an existing file or folder (the exporter checks what it holds);
* hands the exporter a temporary path in the output's folder and renames it onto the output
  only when the exporter returned without an error (``os.replace``: atomic), so a reader sees
  no file, the old file or the complete new one, never a partial one.

The source an exporter needs is a media source of one kind (:attr:`Exporter.source_kind`:
``volume`` for a DICOM series, ``tiled`` for a GeoTIFF scene), which is how ``infer --export
NAME`` finds it among its own flags (``--volume DIR``, ``--tiled SCENE``). This module imports
neither torch nor the model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .atomic import sync_directory
from .errors import ConfigError, InputError, option_hint, unknown_name_error

__all__ = ["ExportOption", "ExportResult", "Exporter", "get_exporter", "list_exporters", "export_answer",
           "check_export_target"]


@dataclass(frozen=True)
class ExportOption:
    """An option an exporter takes besides the source, the answer and the output.

    Attributes:
        type: ``str``, ``int``, ``float`` or ``bool`` (the CLI flag's type).
        default: the value when the option is not given.
        help: one line for ``--help``.
    """

    type: type
    default: Any
    help: str


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        exporter: the exporter's name.
        output: the file written (absolute).
        summary: one line saying what it holds (``2 polygon(s) ...``).
        details: JSON-ready facts about the file (UIDs, feature count...).
    """

    exporter: str
    output: Path
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


class Exporter(ABC):
    """Writes an answer about one source into a file another system reads.

    Subclasses set the class attributes and implement :meth:`export`; they register through
    ``longllava_register_exporters``.

    Attributes:
        name: the NAME of ``longllava-sdk export NAME`` and ``infer --export NAME`` (unique).
        description: one line for ``--help``: what the file is.
        source_kind: the media kind of the source it needs (``volume``, ``tiled``...): ``infer
            --export`` takes the source from the flag of that kind.
        source_option: the flag naming the source on ``longllava-sdk export NAME`` (``series``
            -> ``--series DIR``).
        source_help: one line for that flag's ``--help``.
        suffixes: the output file suffixes accepted (lower case, with the dot).
        options: further options by name (each a flag of ``export NAME``).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    source_kind: ClassVar[str]
    source_option: ClassVar[str]
    source_help: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    options: ClassVar[dict[str, ExportOption]] = {}

    def check_source(self, source: Path) -> None:
        """Cheap checks of ``source`` before a model runs (``infer --export``); raise :class:`InputError`.

        The default accepts anything that exists; :meth:`export` checks the content anyway.
        """

    @abstractmethod
    def export(self, source: Path, answer: str, output: Path, **options: Any) -> ExportResult:
        """Write ``answer`` about ``source`` to ``output`` and say what was written.

        Args:
            source: the source file or folder (absolute, exists).
            answer: the model's answer text.
            output: the file to write (a temporary path the engine renames onto the target;
                :attr:`ExportResult.output` is set by the engine).
            **options: values of :attr:`options` (defaults filled in).

        Raises:
            InputError: the source or the answer cannot be exported (naming which and why).
        """


def list_exporters() -> dict[str, type[Exporter]]:
    """Installed exporters by name, built-ins included."""
    from .registry import available_exporters

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


@contextlib.contextmanager
def _atomic_file(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary path next to ``target``, renamed onto it when the block succeeds (removed otherwise)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; an export is an ordinary shared file
        if target.exists() and not overwrite:  # appeared while we were writing
            raise InputError(target, f"already exists; pass {option_hint('overwrite')} to replace it")
        os.replace(temporary, target)
        sync_directory(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


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
    with _atomic_file(target, overwrite) as temporary:
        result = exporter.export(source_path, answer, temporary, **values)
    result.output = target
    return result
