"""The built-in commands, registered through ``longllava_register_commands`` like a plugin's.

Each command is the library function itself (its signature is the command's flags), wrapped
with a presenter that prints the result for a shell user. The library functions are named by
import path (:class:`LazyCommand`): their modules load torch / transformers, and
``longllava-sdk --help`` or ``plan`` must not pay for that; the help line comes from the
function's docstring, read from its source file without importing it. The CLI registers this
module with the plugin manager as plugin ``longllava_sdk.cli``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable

from ..hookspecs import hookimpl


def command(func: Callable[..., Any], *, name: str | None = None,
            present: Callable[[Any], int | None] | None = None) -> Callable[..., Any]:
    """``func`` as a CLI command: same signature and docstring; ``present`` prints its result.

    Returns a wrapper whose return value is the exit status (``present``'s, else 0).
    """

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> int:
        result = func(*args, **kwargs)
        if present is not None:
            status = present(result)
            return 0 if status is None else int(status)
        return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0

    run.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    run.command_name = name or func.__name__.replace("_", "-")  # type: ignore[attr-defined]
    return run


def _source_file(module: str) -> Path | None:
    """The ``.py`` file of ``module``, found without importing it (nor its packages' ``__init__``)."""
    parts = module.split(".")
    spec = importlib.util.find_spec(parts[0])  # the top package: imported already, or found by any finder
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]),
                                                        list(spec.submodule_search_locations))
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


class LazyCommand:
    """A library function as a command, imported only when the command runs or shows its options.

    ``target`` is ``"package.module:function"``; ``present`` prints the function's result (see
    :func:`command`). Calling, ``inspect.signature`` and ``__doc__`` act on the function itself.
    """

    def __init__(self, target: str, *, name: str | None = None,
                 present: Callable[[Any], int | None] | None = None,
                 config_file: Callable[[Path, Any], dict[str, Any] | None] | None = None,
                 positional: str | None = None) -> None:
        self.module, _, self.attribute = target.partition(":")
        self.command_name = name or self.attribute.replace("_", "-")
        self.__name__ = self.attribute
        self._present = present
        #: turns a --config file of another schema into options (a recipe for finetune), else None
        self.config_file = config_file
        #: the option a leading positional argument sets (``serve DIR`` for ``serve --model DIR``)
        self.positional = positional

    @functools.cached_property
    def function(self) -> Callable[..., Any]:
        """The library function wrapped as a command (imports its module)."""
        func = getattr(importlib.import_module(self.module), self.attribute)
        return command(func, name=self.command_name, present=self._present)

    @property
    def summary(self) -> str:
        """The first paragraph of the function's docstring, read from its source without importing it."""
        source = _source_file(self.module)
        if source is not None:
            for node in ast.parse(source.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.FunctionDef) and node.name == self.attribute:
                    doc = ast.get_docstring(node) or ""
                    return doc.split("\n\n")[0].replace("\n", " ")
        return (inspect.getdoc(self.function) or "").split("\n\n")[0].replace("\n", " ")

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        return self.function.__doc__

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<command {self.command_name}: {self.module}:{self.attribute}>"


class CommandGroup:
    """A command made of sub-commands: ``longllava-sdk <name> <sub-command> [flags]``.

    Each sub-command is a function as for :func:`command` (its signature is its flags). The
    group itself is only a name and a help text; calling it is the same as running it
    without a sub-command (the CLI prints the group's help instead).
    """

    def __init__(self, name: str, doc: str, subcommands: list[Callable[..., Any]]) -> None:
        self.command_name = name
        self.__doc__ = doc
        self.__name__ = name.replace("-", "_")
        self.subcommands: dict[str, Callable[..., Any]] = {
            getattr(f, "command_name", None) or f.__name__.replace("_", "-"): f for f in subcommands}

    def __call__(self) -> int:
        return 2


def command_group(name: str, doc: str, subcommands: list[Callable[..., Any]]) -> CommandGroup:
    """A command ``name`` whose sub-commands are ``subcommands`` (see :class:`CommandGroup`).

    ``doc``'s first paragraph is the group's help line in ``longllava-sdk --help``.
    """
    return CommandGroup(name, doc, subcommands)


def recipe_config(path: Path, data: Any) -> dict[str, Any] | None:
    """A recipe file given as ``finetune --config``: the same as ``--domain FILE`` (a recipe has a ``name``)."""
    if isinstance(data, dict) and "name" in data:
        return {"domain": str(path)}
    return None


@hookimpl
def longllava_register_commands() -> list[Callable[..., Any]]:
    """The SDK's own commands: info, init-model, infer, convert-official, plugins, finetune, merge, eval, serve, plan, bench, data, export."""
    from .cmd_bench import bench
    from .cmd_data import formats, present_deidentify, present_import
    from .cmd_export import exporter_commands
    from .cmd_infer import infer
    from .cmd_info import info
    from .cmd_model import init_model
    from .cmd_plugins import plugins
    from .present import present_eval, present_finetune, present_merge, present_plan

    return [
        info, init_model, infer,
        LazyCommand("longllava_sdk.convert_official:convert_official"),
        plugins,
        LazyCommand("longllava_sdk.training.finetuning:finetune", present=present_finetune, config_file=recipe_config),
        LazyCommand("longllava_sdk.model_folders:merge_adapter", name="merge", present=present_merge),
        command_group("eval", EVAL_HELP, [
            LazyCommand("longllava_sdk.evaluation.niah:evaluate_niah", name="niah", present=present_eval),
            LazyCommand("longllava_sdk.evaluation.vnbench:evaluate_vnbench", name="vnbench", present=present_eval),
            LazyCommand("longllava_sdk.evaluation.dataset:evaluate_data", name="data", present=present_eval),
        ]),
        LazyCommand("longllava_sdk.serving.server:serve", positional="model"),
        LazyCommand("longllava_sdk.planner:plan", present=present_plan),
        bench,
        command_group("data", DATA_HELP, [
            LazyCommand("longllava_sdk.data_import:import_dataset", name="import", present=present_import),
            formats,
            LazyCommand("longllava_sdk.deidentify:deidentify", present=present_deidentify),
        ]),
        command_group("export", EXPORT_HELP, exporter_commands()),
    ]


EVAL_HELP = """Evaluate a model folder: needle-in-a-haystack, VNBench-style diagnostics, or metrics on a dataset.

    longllava-sdk eval niah --model DIR               accuracy by number of images x needle depth + heatmap
    longllava-sdk eval vnbench --model DIR            retrieval / ordering / counting multiple choice
    longllava-sdk eval data --model DIR --domain medical     (or --data FILE) the head's metrics

Runs are resumable: rerun the same command to continue an interrupted one."""


DATA_HELP = """Bring datasets in: import a public dataset layout into a manifest, list the formats, de-identify DICOM.

    longllava-sdk data formats                                     the formats and where each finds its media
    longllava-sdk data import ct-rate reports.csv --output data/ct_rate.jsonl
    longllava-sdk data deidentify dicom_in/ --output dicom_out/     DICOM PS3.15 Basic Profile + a report

Bad rows are listed with their row number and reason; the good ones are written atomically."""


EXPORT_HELP = """Write an answer back into the team's own systems: a DICOM SR in the study, GeoJSON on the map.

    longllava-sdk export dicom-sr --series ct/ --answer "..." --output answer_sr.dcm [--model DIR]
    longllava-sdk export geojson --raster scene.tif --answer "... {<10><20><30><40>|<0>}" --output boxes.geojson

One sub-command per installed exporter (a plugin adds more through longllava_register_exporters);
`infer --export NAME --export-path FILE` does the same in one step. Outputs are written atomically."""
