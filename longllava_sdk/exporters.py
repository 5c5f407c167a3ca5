"""Answer exporters: the contract every ``longllava-sdk export NAME`` plugin implements.

An exporter writes a model's answer about one source back into the format the team's own
systems read: a radiology answer about a DICOM series as a DICOM Structured Report in that
study (``dicom-sr``), a remote-sensing answer with GeoChat boxes about a GeoTIFF scene as
GeoJSON polygons on a map (``geojson``). It is registered through the
``longllava_register_exporters`` hook, built-ins exactly like third-party ones; the engine
(:func:`longllava_sdk.export.export_answer`) chooses one by its :attr:`Exporter.name` only.

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

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["ExportOption", "ExportResult", "Exporter"]


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
        options: further options by name (each a flag of ``export NAME``); an option named
            ``model`` receives the model folder under ``infer --export`` (the model that answered).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    source_kind: ClassVar[str]
    source_option: ClassVar[str]
    source_help: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    options: ClassVar[dict[str, ExportOption]] = {}

    def check_source(self, source: Path) -> None:
        """Cheap checks of ``source`` before a model runs (``infer --export``).

        The default accepts anything that exists; :meth:`export` checks the content anyway.
        Raises ``longllava_sdk.errors.InputError``.
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
            longllava_sdk.errors.InputError: the source or the answer cannot be exported (naming which and why).
        """
