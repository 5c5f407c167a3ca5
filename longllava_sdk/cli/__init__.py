"""The ``longllava-sdk`` command line: argument handling only, on jsonargparse.

Every sub-command is a plain Python function with type-hinted parameters and a docstring (as
in litgpt); its signature is the command's flags, so a command is callable from Python exactly
as from the shell, and a new option is one edit (the function's signature and ``Args:`` line).
The built-in commands are the library's own functions (``finetune`` is
:func:`longllava_sdk.training.finetuning.finetune`, ``merge`` is
:func:`longllava_sdk.model_folders.merge_adapter`...), wrapped with a presenter that prints
their result (:mod:`.builtin`); they are registered through the same
``longllava_register_commands`` hook as any plugin's commands, and a plugin's plain function
becomes a command the same way.

jsonargparse parses, types and validates the values, reads ``--config FILE`` (YAML whose keys
are the command's options) and writes ``--print-config``; so
``longllava-sdk COMMAND ... --print-config > run.yaml`` then
``longllava-sdk COMMAND --config run.yaml`` reruns the same command (later flags override the
file). This module only names the flags (:func:`command_parser`):

* a positional parameter without default becomes a positional argument
  (``init-model OUT``); a keyword-only one without default a required flag (``--model DIR``);
* a parameter object (a dataclass or pydantic model: ``FinetuneArgs``, ``LoadOptions``,
  ``HaystackOptions``, ``ServerSettings``) contributes its fields as flat flags (``--dtype``,
  not ``--load.dtype``), and is rebuilt from them before the call;
* ``bool`` options become ``--flag`` / ``--no-flag``;
* ``list[X]`` (and ``tuple[X, ...]``) becomes ``--name A B C``;
* ``dict[str, ...]`` becomes a repeatable ``--name KEY=VALUE`` (``adapter_options`` ->
  ``--adapter-option window=lung --adapter-option allow_non_parallel=true``; a mapping in YAML);
* underscores become dashes (``max_new_tokens`` -> ``--max-new-tokens``; the YAML keys keep
  the underscores);
* a command group (:func:`~.builtin.command_group`) is a command whose sub-commands are
  functions themselves (``longllava-sdk eval niah``, ``eval vnbench``, ``eval data``);
* the first paragraph of the docstring is the command's help, the rest (without the
  ``Args:`` section) its description; ``Args:`` / ``Attributes:`` lines document the flags.

Errors: an SDK error ends the command with ``error: ...`` on stderr and status 1; inside the
CLI, errors phrase their advice as flags (``--overwrite``, not ``overwrite=True``). A bad
command line (unknown command or flag, a value of the wrong type) is one line on stderr and
status 2, with "did you mean" for a misspelt flag or command. Nothing here imports torch: the
command's own module loads what it needs when it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import LongLLaVAError, cli_interface, did_you_mean, unknown_name_message
from ..options import is_options_class, option_fields

BUILTIN_PLUGIN = "longllava_sdk.cli"
PROG = "longllava-sdk"
DESCRIPTION = "Fine-tune and run LongLLaVA on medical volumes, GeoTIFF scenes and long videos."

__all__ = ["BUILTIN_PLUGIN", "available_commands", "command_parser", "parse_command", "main", "UsageError"]


class UsageError(Exception):
    """A bad command line: shown as one line, status 2."""


# -- commands ------------------------------------------------------------------------------------


def available_commands() -> dict[str, Callable[..., Any]]:
    """The built-in commands and every plugin's, by command name, all through the command hook."""
    from ..plugin_manager import get_plugin_manager
    from ..registry import available_commands as registered
    from . import builtin

    manager = get_plugin_manager()
    if not manager.has_plugin(BUILTIN_PLUGIN) and not manager.is_blocked(BUILTIN_PLUGIN):
        manager.register(builtin, name=BUILTIN_PLUGIN)
    return registered()


def _summary(func: Callable[..., Any]) -> str:
    summary = getattr(func, "summary", None)  # a LazyCommand reads it without importing its module
    if isinstance(summary, str):
        return summary
    return (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")


def _listing(title: str, commands: dict[str, Callable[..., Any]]) -> str:
    width = max((len(name) for name in commands), default=0) + 2
    return title + "\n" + "\n".join(f"  {name:<{width}}{_summary(func)}" for name, func in commands.items())


def _group_help(prog: str, description: str, commands: dict[str, Callable[..., Any]], metavar: str) -> str:
    return (f"usage: {prog} [-h] {metavar} ...\n\n{description}\n\n"
            f"{_listing(metavar.lower() + 's:', commands)}\n\n"
            f"`{prog} {metavar} --help` lists a {metavar.lower()}'s options; every {metavar.lower()} "
            f"takes --config FILE (YAML) and --print-config.")


def _select(argv: list[str]) -> tuple[str, Callable[..., Any] | None, list[str], str | None]:
    """(prog, the command function, its arguments, help text to print instead) for ``argv``.

    Without a command (or a group's mode) the help text is printed and the status is 2.
    """
    commands = available_commands()
    prog, description, metavar = PROG, DESCRIPTION, "COMMAND"
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            text = _group_help(prog, description, commands, metavar)
            return prog, None, argv, text
        name = argv[0]
        if name.startswith("-"):
            raise UsageError(f"{prog}: error: expected a {metavar.lower()} before {name} "
                             f"({', '.join(commands)}); see {prog} --help")
        if name not in commands:
            raise UsageError(f"{prog}: error: {unknown_name_message(metavar.lower(), name, commands)}")
        func, argv, prog = commands[name], argv[1:], f"{prog} {name}"
        subcommands = getattr(func, "subcommands", None)
        if not subcommands:
            return prog, func, argv, None
        commands, description, metavar = subcommands, inspect.getdoc(func) or "", "MODE"


# -- parser --------------------------------------------------------------------------------------


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _options_class(annotation: Any) -> type | None:
    """The parameter object class of a parameter typed ``Cls``, ``Cls | None`` or ``Cls | str``."""
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return next((c for c in candidates if is_options_class(c)), None)


def _scalar(annotation: Any) -> Any:
    """The value type jsonargparse checks: int / float / str / bool (paths and unions are text)."""
    return annotation if annotation in (int, float, str, bool) else str


class _KeyValue(argparse.Action):
    """Repeatable ``--flag KEY=VALUE`` collected into a dict (values stay text: the callee types them).

    A mapping (from a ``--config`` file) replaces the collected dict.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if isinstance(values, dict) or values is None:
            setattr(namespace, self.dest, None if values is None else dict(values))
            return
        key, sep, value = str(values).partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentError(self, f"expects KEY=VALUE, got {values!r}")
        collected = dict(getattr(namespace, self.dest, None) or {})
        collected[key.strip()] = value.strip()
        setattr(namespace, self.dest, collected)


def _docs(obj: Any) -> tuple[str, str, dict[str, str]]:
    """(summary, description, {parameter or attribute: help}) of ``obj``'s docstring (Google style)."""
    import docstring_parser

    doc = inspect.getdoc(obj) or ""
    parsed = docstring_parser.parse(doc, docstring_parser.DocstringStyle.GOOGLE)
    params = {p.arg_name: " ".join((p.description or "").split()) for p in parsed.params}
    description = re.split(r"\n(?:Args|Arguments|Attributes|Returns|Raises):\n", doc)[0].strip()
    return (parsed.short_description or "").replace("\n", " "), description, params


def _add_option(parser: Any, name: str, annotation: Any, default: Any, help_text: str | None, *,
                positional: bool, required: bool) -> list[str]:
    """Add one option; returns its flags (for "did you mean")."""
    annotation = _unwrap_optional(annotation)
    origin = typing.get_origin(annotation)
    flag = "--" + name.replace("_", "-")
    kwargs: dict[str, Any] = {"help": help_text}
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        item = next((a for a in typing.get_args(annotation) if a is not Ellipsis), str)
        kwargs.update(nargs="+", type=_scalar(item))
    elif origin is dict or annotation is dict:
        kwargs.update(action=_KeyValue, metavar="KEY=VALUE", help=(help_text or "") + " (repeatable)")
        flag = flag[:-1] if flag.endswith("s") else flag
    elif annotation is bool and not positional:
        from jsonargparse import ActionYesNo

        kwargs.update(action=ActionYesNo(no_prefix="no-"))
    else:
        scalar = _scalar(annotation)
        kwargs["type"] = typing.Optional[scalar] if default is None and not required else scalar
    if positional:
        kwargs.pop("metavar", None)
        parser.add_argument(name, **kwargs)
        return []
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
    parser.add_argument(flag, dest=name, **kwargs)
    return [flag, "--no-" + flag[2:]] if annotation is bool else [flag]


def _help_formatter() -> type:
    from jsonargparse import DefaultHelpFormatter

    class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
        """jsonargparse's help (types, defaults) with the docstring's line breaks kept."""

    return HelpFormatter


def command_parser(func: Callable[..., Any], prog: str = PROG) -> Any:
    """The jsonargparse parser of ``func``'s flags (see the module docstring for the mapping).

    ``parser.objects`` maps each parameter object parameter to (its class, its field names);
    ``parser.flags`` lists the flags, ``parser.keys`` the options' names (the config file's keys).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    summary, description, param_docs = _docs(func)
    parser = ArgumentParser(prog=prog, description=description or summary, exit_on_error=False,
                            print_config="--print-config", formatter_class=_help_formatter(), allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML file of options (keys: the options below, with underscores); "
                             "later flags override it. --print-config writes one.")
    objects: dict[str, tuple[type, list[str]]] = {}
    flags = ["--help", "--config", "--print-config"]
    keys: list[str] = []
    hints = typing.get_type_hints(inspect.unwrap(getattr(func, "function", func)))
    for pname, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        annotation = hints.get(pname, str)
        cls = _options_class(annotation)
        if cls is not None:
            _, _, field_docs = _docs(cls)
            base = param.default if isinstance(param.default, cls) else None
            names = []
            for fname, (fannotation, fdefault) in option_fields(cls).items():
                if base is not None:
                    fdefault = getattr(base, fname)
                flags += _add_option(parser, fname, fannotation, None if fdefault is dataclasses.MISSING else fdefault,
                                     field_docs.get(fname), positional=False, required=fdefault is dataclasses.MISSING)
                names.append(fname)
            objects[pname] = (cls, names)
            keys += names
            continue
        no_default = param.default is inspect.Parameter.empty
        keys.append(pname)
        flags += _add_option(parser, pname, annotation, None if no_default else param.default, param_docs.get(pname),
                             positional=no_default and param.kind is not param.KEYWORD_ONLY,
                             required=no_default and param.kind is param.KEYWORD_ONLY)
    parser.objects = objects
    parser.flags = flags
    parser.keys = keys
    return parser


# -- parsing -------------------------------------------------------------------------------------


def _one_line(message: str, parser: Any) -> str:
    """A jsonargparse / argparse message as one line, speaking flags, with "did you mean"."""
    message = re.sub(r'Parser key "([\w.]+)"', lambda m: "--" + m.group(1).replace("_", "-"), message)
    message = re.sub(r"Expected an? <class '(\w+)'>", r"expected \1", message)
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    required = (re.match(r"the following arguments are required: (.*)", message, re.IGNORECASE)
                or re.match(r'Validation failed: Key "(\w+)" is required', message))  # older jsonargparse (4.40)
    if required:
        names = [name.strip() for name in required.group(1).split(",")]
        message = "missing " + ", ".join(
            flag if (flag := "--" + name.replace("_", "-")) in parser.flags else name.upper() for name in names)
    key = re.match(r"Option '(\w+)' is not accepted", message)  # a key of a --config file
    if key:
        message = unknown_name_message("option in the config file", key.group(1), parser.keys, listing="options")
    unknown = re.match(r"unrecognized arguments: (.*)", message, re.IGNORECASE)
    if unknown:
        hints = []
        for word in unknown.group(1).split():
            if word.startswith("-"):
                close = did_you_mean(word.split("=")[0], parser.flags)
                hints.append(f"{word} (did you mean {close}?)" if close else word)
        message = "unrecognized arguments: " + ", ".join(hints or [unknown.group(1)])
    return message


def _config_files(func: Any, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``argv`` without the ``--config`` files ``func`` turns into options itself (a recipe for finetune)."""
    convert = getattr(func, "config_file", None)
    if convert is None:
        return argv, {}
    kept: list[str] = []
    options: dict[str, Any] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        path = None
        if token == "--config" and index + 1 < len(argv):
            path, step = argv[index + 1], 2
        elif token.startswith("--config="):
            path, step = token.split("=", 1)[1], 1
        if path is not None and Path(path).is_file():
            import yaml

            try:
                data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            except yaml.YAMLError:
                data = None  # jsonargparse reports it
            converted = convert(Path(path), data)
            if converted is not None:
                options.update(converted)
                index += step
                continue
        kept.append(token)
        index += 1
    return kept, options


def parse_command(argv: Sequence[str]) -> tuple[Callable[..., Any] | None, list[Any], dict[str, Any], str | None]:
    """``(function, positional arguments, keyword arguments, text)`` for a command line.

    ``function`` is ``None`` when ``text`` (a help page) is all there is to print (then the
    positional arguments are ``["--help"]`` if asked for, else empty). Raises
    :class:`UsageError` for a bad command line; ``SystemExit(0)`` after ``--help`` /
    ``--print-config`` (jsonargparse prints them).
    """
    prog, func, rest, text = _select(list(argv))
    if func is None:
        return None, rest, {}, text
    positional = getattr(func, "positional", None)
    if positional and rest and not rest[0].startswith("-"):
        rest = ["--" + positional.replace("_", "-"), *rest]  # `serve DIR` is `serve --model DIR`
    rest, from_files = _config_files(func, rest)
    parser = command_parser(func, prog)
    if from_files:
        parser.set_defaults(**from_files)
    try:
        namespace = parser.parse_args(rest)
    except argparse.ArgumentError as exc:
        raise UsageError(f"{prog}: error: {_one_line(str(exc), parser)}") from None
    values = {key: value for key, value in vars(namespace.as_flat()).items() if key != "config"}
    for pname, (cls, names) in parser.objects.items():
        values[pname] = cls(**{name: values.pop(name) for name in names})
    args: list[Any] = []
    for pname, param in inspect.signature(func).parameters.items():
        if param.kind is param.POSITIONAL_ONLY and pname in values:
            args.append(values.pop(pname))
    return func, args, values, None


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


class _Lines(logging.Formatter):
    """Bare messages; a WARNING as ``warning: message``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def _show_sdk_info_logs() -> None:
    """Print the SDK's own INFO lines (which kernels run, which checkpoint a resume picked).

    Only the ``longllava_sdk`` logger hierarchy, as bare messages on stderr (warnings, such as
    the ones adapters record about a source, as ``warning: ...``, one line each): other
    libraries' loggers keep their own levels. Records still propagate (an application's or
    pytest's root handlers see them); the root logger has no handler of its own in a CLI process.
    """
    sdk = logging.getLogger("longllava_sdk")
    if not any(isinstance(h, _CurrentStderrHandler) for h in sdk.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(_Lines("%(message)s"))
        sdk.addHandler(handler)
    if sdk.level == logging.NOTSET or sdk.level > logging.INFO:
        sdk.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    _show_sdk_info_logs()
    argv = list(sys.argv[1:] if argv is None else argv)
    with cli_interface():
        try:
            try:
                func, args, kwargs, text = parse_command(argv)
            except SystemExit as exc:  # --help / --print-config printed
                return int(exc.code or 0)
            if func is None:
                print(text)
                return 0 if args else 2  # args: the --help that asked for it
            result = func(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at exit
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return 2
        except LongLLaVAError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # the reader went away (`longllava-sdk plan ... | head`): stop quietly, as shell tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0
