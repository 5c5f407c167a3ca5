"""``longllava-sdk export NAME``: one sub-command per installed exporter, built from its declaration.

An exporter (:class:`~longllava_sdk.exporters.Exporter`) declares its source flag
(``source_option``: ``--series`` for ``dicom-sr``, ``--raster`` for ``geojson``) and its
options; :func:`exporter_command` turns that into a function whose signature is the
sub-command's flags and which calls :func:`~longllava_sdk.exporters.export_answer`, the same
function ``infer --export`` and Python callers use. A plugin's exporter gets its sub-command
the same way, with nothing else to write.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from ..export import export_answer
from ..exporters import Exporter, ExportResult


def present_export(result: ExportResult) -> int:
    """``wrote OUT: <summary>`` on stdout."""
    print(f"wrote {result.output}: {result.summary}")
    return 0


@functools.cache
def exporter_command(exporter: type[Exporter]) -> Callable[..., Any]:
    """The function behind ``longllava-sdk export <exporter.name>`` (its signature is the flags).

    One function per exporter class for the process (cached), so the command is the same
    object however often the commands are listed.
    """
    source = exporter.source_option

    def run(**kwargs: Any) -> int:
        values = dict(kwargs)
        result = export_answer(exporter.name, values.pop(source), values.pop("answer"), values.pop("output"),
                               overwrite=values.pop("overwrite"), **values)
        return present_export(result)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter(source, keyword, annotation=str),
                  inspect.Parameter("answer", keyword, annotation=str),
                  inspect.Parameter("output", keyword, annotation=str),
                  inspect.Parameter("overwrite", keyword, annotation=bool, default=False)]
    annotations: dict[str, Any] = {source: str, "answer": str, "output": str, "overwrite": bool}
    docs = [f"    {source}: {exporter.source_help}",
            "    answer: the model's answer text (e.g. what `longllava-sdk infer` printed)",
            f"    output: the file to write ({' / '.join(exporter.suffixes)}); written atomically",
            "    overwrite: replace an existing output file"]
    for name, spec in exporter.options.items():
        kind = spec.type if spec.default is not None else (spec.type | None)  # type: ignore[operator]
        parameters.append(inspect.Parameter(name, keyword, annotation=kind, default=spec.default))
        annotations[name] = kind
        docs.append(f"    {name}: {spec.help}")
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = annotations
    run.__name__ = exporter.name.replace("-", "_")
    run.__qualname__ = run.__name__
    run.__doc__ = f"Write {exporter.description}.\n\nArgs:\n" + "\n".join(docs)
    run.command_name = exporter.name  # type: ignore[attr-defined]
    return run


def exporter_commands() -> list[Callable[..., Any]]:
    """One sub-command per installed exporter, by name."""
    from ..registry import available_exporters

    return [exporter_command(cls) for _, cls in sorted(available_exporters().items())]
