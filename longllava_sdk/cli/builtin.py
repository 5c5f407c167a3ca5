"""The built-in commands, registered through ``longllava_register_commands`` like a plugin's.

Each command is the library function itself (its signature is the command's flags), wrapped
with a presenter that prints the result for a shell user. The CLI registers this module with
the plugin manager as plugin ``longllava_sdk.cli``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from ..hookspecs import hookimpl


def command(func: Callable[..., Any], *, name: str | None = None,
            present: Callable[[Any], int | None] | None = None) -> Callable[..., Any]:
    """``func`` as a CLI command: same signature and docstring; ``present`` prints its result.

    Returns a wrapper whose return value is the exit status (``present``'s, else 0).
    """

    @functools.wraps(func)
    def run(**kwargs: Any) -> int:
        result = func(**kwargs)
        if present is not None:
            status = present(result)
            return 0 if status is None else int(status)
        return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0

    run.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    run.command_name = name or func.__name__.replace("_", "-")  # type: ignore[attr-defined]
    return run


class CommandGroup:
    """A command made of sub-commands: ``longllava-sdk <name> <sub-command> [flags]``.

    Each sub-command is a function as for :func:`command` (its signature is its flags). The
    group itself is only a name and a help text; calling it is the same as running it
    without a sub-command (the parser prints the group's help instead).
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


@hookimpl
def longllava_register_commands() -> list[Callable[..., Any]]:
    """The SDK's own commands: info, init-model, infer, convert-official, plugins, finetune, merge, eval, serve, plan, bench, data."""
    from ..convert_official import convert_official
    from ..evaluation import evaluate_data, evaluate_niah, evaluate_vnbench
    from ..model_folders import merge_adapter
    from ..planner import plan
    from ..serving import serve
    from ..training.finetuning import finetune
    from ..data_import import import_dataset
    from ..deidentify import deidentify
    from .cmd_bench import bench
    from .cmd_data import formats, present_deidentify, present_import
    from .cmd_infer import infer
    from .cmd_info import info
    from .cmd_model import init_model
    from .cmd_plugins import plugins
    from .present import present_eval, present_finetune, present_merge, present_plan

    return [
        info, init_model, infer,
        command(convert_official),
        plugins,
        command(finetune, present=present_finetune),
        command(merge_adapter, name="merge", present=present_merge),
        command_group("eval", EVAL_HELP, [
            command(evaluate_niah, name="niah", present=present_eval),
            command(evaluate_vnbench, name="vnbench", present=present_eval),
            command(evaluate_data, name="data", present=present_eval),
        ]),
        command(serve),
        command(plan, present=present_plan),
        bench,
        command_group("data", DATA_HELP, [
            command(import_dataset, name="import", present=present_import),
            formats,
            command(deidentify, present=present_deidentify),
        ]),
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
