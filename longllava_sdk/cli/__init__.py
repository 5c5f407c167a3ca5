"""The ``longllava-sdk`` command line: argument handling only.

Every sub-command is a plain Python function with type-hinted keyword arguments and a
docstring (as in litgpt); :func:`build_parser` turns its signature into an ``argparse``
sub-parser, so a command is callable from Python exactly as from the shell, and a new option
is one edit (the function's signature and ``Args:`` line). The built-in commands are the
library's own functions (``finetune`` is :func:`longllava_sdk.training.finetuning.finetune`,
``merge`` is :func:`longllava_sdk.model_folders.merge_adapter`...), wrapped with a presenter
that prints their result (:mod:`.builtin`); they are registered through the same
``longllava_register_commands`` hook as any plugin's commands.

Conventions of the signature -> flags mapping:

* a positional parameter without default becomes a positional argument
  (``init-model OUT``); a keyword-only one without default a required flag (``--model DIR``);
* ``bool`` defaults become ``--flag`` / ``--no-flag``;
* ``list[X]`` becomes ``--name A B C``;
* ``dict[str, ...]`` becomes a repeatable ``--name KEY=VALUE`` (``adapter_options`` ->
  ``--adapter-option window=lung --adapter-option allow_non_parallel=true``);
* underscores become dashes (``max_new_tokens`` -> ``--max-new-tokens``);
* a command group (:func:`~.builtin.command_group`) is a command whose sub-commands are
  functions themselves (``longllava-sdk eval niah``, ``eval vnbench``, ``eval data``);
* the first paragraph of the docstring is the command's help, the rest (without the
  ``Args:`` section) its description; ``Args:`` lines document the flags.

Errors: an SDK error ends the command with ``error: ...`` on stderr and status 1; inside the
CLI, errors phrase their advice as flags (``--overwrite``, not ``overwrite=True``).
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import os
import sys
import types
import typing
from typing import Any, Callable, Sequence

from ..errors import LongLLaVAError, cli_interface

BUILTIN_PLUGIN = "longllava_sdk.cli"


def _arg_docs(func: Callable[..., Any]) -> tuple[str, str, dict[str, str]]:
    """(summary, description without the Args section, {parameter: help}) of a docstring."""
    doc = inspect.getdoc(func) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    params: dict[str, str] = {}
    kept: list[str] = []
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
                continue
            if line.startswith("        ") and current:
                params[current] += " " + line.strip()
                continue
            if line.strip() == "":
                continue
            in_args = False
        kept.append(line)
    return summary, "\n".join(kept).strip(), params


class _KeyValue(argparse.Action):
    """Repeatable ``--flag KEY=VALUE`` collected into a dict (values stay text: the callee types them)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        key, sep, value = str(values).partition("=")
        if not sep or not key.strip():
            parser.error(f"{option_string} expects KEY=VALUE, got {values!r}")
        collected = dict(getattr(namespace, self.dest) or {})
        collected[key.strip()] = value.strip()
        setattr(namespace, self.dest, collected)


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_command(subparsers: argparse._SubParsersAction, name: str, func: Callable[..., Any]) -> None:
    """Add ``func`` as sub-command ``name``, with flags derived from its signature.

    A command with ``subcommands`` (:func:`~.builtin.command_group`) becomes a parser whose
    own sub-commands are those functions (``longllava-sdk eval niah --model DIR``).
    """
    summary, description, param_docs = _arg_docs(func)
    parser = subparsers.add_parser(name, help=summary.replace("%", "%%"), description=description.replace("%", "%%"),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands: dict[str, Callable[..., Any]] | None = getattr(func, "subcommands", None)
    if subcommands:
        nested = parser.add_subparsers(dest="_subcommand", metavar="MODE")
        for sub_name, sub_func in subcommands.items():
            add_command(nested, sub_name, sub_func)
        parser.set_defaults(_group_parser=parser)
        return
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
        elif origin is dict:
            singular = flag[:-1] if flag.endswith("s") else flag
            parser.add_argument(singular, dest=pname, action=_KeyValue, default=param.default, metavar="KEY=VALUE",
                                help=(help_text or "") + " (repeatable)")
        elif origin is list:
            item_type = typing.get_args(annotation)[0]
            parser.add_argument(flag, dest=pname, nargs="+", type=item_type, default=param.default,
                                help=help_text)
        else:
            arg_type = annotation if annotation in (int, float, str) else str
            parser.add_argument(flag, dest=pname, type=arg_type, default=param.default, help=help_text)
    parser.set_defaults(_command=func)


def available_commands() -> dict[str, Callable[..., Any]]:
    """The built-in commands and every plugin's, by command name, all through the command hook."""
    from ..plugin_manager import get_plugin_manager
    from ..registry import available_commands as registered
    from . import builtin

    manager = get_plugin_manager()
    if not manager.has_plugin(BUILTIN_PLUGIN) and not manager.is_blocked(BUILTIN_PLUGIN):
        manager.register(builtin, name=BUILTIN_PLUGIN)
    return registered()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longllava-sdk",
        description="Fine-tune and run LongLLaVA on medical volumes, GeoTIFF scenes and long videos.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, func in available_commands().items():
        add_command(subparsers, name, func)
    return parser


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted.

    ``main`` may run many times in one process (tests, notebooks) with ``sys.stderr`` swapped in
    between; a handler bound to the first stream would write into a closed one.
    """

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property ignores it
        pass


def _show_sdk_info_logs() -> None:
    """Print the SDK's own INFO lines (which kernels run, which checkpoint a resume picked).

    Only the ``longllava_sdk`` logger hierarchy, as bare messages on stderr: other libraries'
    loggers keep their own levels. Records still propagate (an application's or pytest's root
    handlers see them); the root logger has no handler of its own in a CLI process.
    """
    sdk = logging.getLogger("longllava_sdk")
    if not any(isinstance(h, _CurrentStderrHandler) for h in sdk.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        sdk.addHandler(handler)
    if sdk.level == logging.NOTSET or sdk.level > logging.INFO:
        sdk.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _show_sdk_info_logs()
    with cli_interface():
        parser = build_parser()
        args = vars(parser.parse_args(argv))
        func = args.pop("_command", None)
        group = args.pop("_group_parser", None)
        for key in ("command", "_subcommand"):
            args.pop(key, None)
        if func is None:  # no command, or a command group without its sub-command
            (group or parser).print_help()
            return 2
        try:
            result = func(**args)
        except LongLLaVAError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # the reader went away (`longllava-sdk plan ... | head`): stop quietly, as shell tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0
