"""The ``longllava-sdk`` command line.

Every sub-command is a plain Python function with type-hinted keyword arguments and a
docstring (as in litgpt); :func:`build_parser` turns its signature into an ``argparse``
sub-parser, so a command is callable from Python exactly as from the shell. Built-in
commands are listed in :data:`BUILTIN_COMMANDS`; plugins add more through the
``longllava_register_commands`` hook.

Conventions of the signature -> flags mapping:

* a positional parameter without default becomes a positional argument
  (``init-model OUT``); a keyword-only one (after ``*``) a required flag (``--model DIR``);
* ``bool`` defaults become ``--flag`` / ``--no-flag``;
* ``list[X]`` becomes ``--name A B C`` (or repeated with ``append`` semantics for paths);
* underscores become dashes (``max_new_tokens`` -> ``--max-new-tokens``);
* the first paragraph of the docstring is the help text; ``Args:`` lines document flags.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
import typing
from typing import Any, Callable, Sequence

from ..errors import LongLLaVAError

#: command name -> "module:function" of the built-in commands.
BUILTIN_COMMANDS: dict[str, str] = {
    "info": "longllava_sdk.cli.cmd_info:info",
    "init-model": "longllava_sdk.cli.cmd_model:init_model",
    "infer": "longllava_sdk.cli.cmd_infer:infer",
    "convert-official": "longllava_sdk.convert_official:convert_official",
    "plugins": "longllava_sdk.cli.cmd_plugins:plugins",
    "finetune": "longllava_sdk.cli.cmd_finetune:finetune",
    "merge": "longllava_sdk.cli.cmd_merge:merge",
    "bench": "longllava_sdk.cli.cmd_bench:bench",
}


def _load(target: str) -> Callable[..., Any]:
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def _arg_docs(func: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(func) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    params: dict[str, str] = {}
    in_args = False
    current = None
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:"):
            in_args = True
            continue
        if in_args:
            match = re.match(r"^\s{4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
            if match:
                current = match.group(1)
                params[current] = match.group(2)
            elif line.startswith("        ") and current:
                params[current] += " " + line.strip()
            elif line.strip() == "":
                continue
            else:
                in_args = False
    return summary, params


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_command(subparsers: argparse._SubParsersAction, name: str, func: Callable[..., Any]) -> None:
    """Add ``func`` as sub-command ``name``, with flags derived from its signature."""
    summary, param_docs = _arg_docs(func)
    parser = subparsers.add_parser(name, help=summary.replace("%", "%%"), description=inspect.getdoc(func))
    hints = typing.get_type_hints(func)
    for pname, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        annotation = _unwrap_optional(hints.get(pname, str))
        help_text = param_docs.get(pname)
        if help_text:
            help_text = help_text.replace("%", "%%")  # argparse formats help with %
        flag = "--" + pname.replace("_", "-")
        origin = typing.get_origin(annotation)
        if param.default is inspect.Parameter.empty and param.kind is param.KEYWORD_ONLY:
            kwargs = {"help": help_text, "required": True, "dest": pname}
            if origin is list:
                kwargs.update(nargs="+", type=typing.get_args(annotation)[0])
            elif annotation in (int, float):
                kwargs["type"] = annotation
            parser.add_argument(flag, **kwargs)
        elif param.default is inspect.Parameter.empty:
            kwargs: dict[str, Any] = {"help": help_text}
            if origin is list:
                kwargs.update(nargs="+", type=typing.get_args(annotation)[0])
            elif annotation in (int, float):
                kwargs["type"] = annotation
            parser.add_argument(pname, **kwargs)
        elif annotation is bool:
            parser.add_argument(flag, dest=pname, action=argparse.BooleanOptionalAction,
                                default=param.default, help=help_text)
        elif origin is list:
            item_type = typing.get_args(annotation)[0]
            parser.add_argument(flag, dest=pname, nargs="+", type=item_type, default=param.default,
                                help=help_text)
        else:
            arg_type = annotation if annotation in (int, float, str) else str
            parser.add_argument(flag, dest=pname, type=arg_type, default=param.default, help=help_text)
    parser.set_defaults(_command=func)


def available_commands() -> dict[str, Callable[..., Any]]:
    """Built-in commands plus the ones plugins register, by command name."""
    commands: dict[str, Callable[..., Any]] = {}
    for name, target in BUILTIN_COMMANDS.items():
        commands[name] = _load(target)
    from ..plugin_manager import get_plugin_manager

    for _plugin, batch in get_plugin_manager().collect("longllava_register_commands"):
        for func in batch or ():
            commands.setdefault(func.__name__.replace("_", "-"), func)
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longllava-sdk",
        description="Fine-tune and run LongLLaVA on medical volumes, GeoTIFF scenes and long videos.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, func in available_commands().items():
        add_command(subparsers, name, func)
    return parser


def _show_sdk_info_logs() -> None:
    """Print the SDK's own INFO lines (which kernels run, which checkpoint a resume picked).

    Only the ``longllava_sdk`` logger hierarchy, as bare messages on stderr: other libraries'
    loggers keep their own levels.
    """
    import logging

    sdk = logging.getLogger("longllava_sdk")
    if not sdk.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        sdk.addHandler(handler)
        sdk.setLevel(logging.INFO)
        sdk.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    _show_sdk_info_logs()
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    func = args.pop("_command", None)
    args.pop("command", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        result = func(**args)
    except LongLLaVAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0
