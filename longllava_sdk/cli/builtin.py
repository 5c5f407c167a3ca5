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


@hookimpl
def longllava_register_commands() -> list[Callable[..., Any]]:
    """The SDK's own commands: info, init-model, infer, convert-official, plugins, finetune, merge, serve, bench."""
    from ..convert_official import convert_official
    from ..model_folders import merge_adapter
    from ..serving import serve
    from ..training.finetuning import finetune
    from .cmd_bench import bench
    from .cmd_infer import infer
    from .cmd_info import info
    from .cmd_model import init_model
    from .cmd_plugins import plugins
    from .present import present_finetune, present_merge

    return [
        info, init_model, infer,
        command(convert_official),
        plugins,
        command(finetune, present=present_finetune),
        command(merge_adapter, name="merge", present=present_merge),
        command(serve),
        bench,
    ]
