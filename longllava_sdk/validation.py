"""The SDK's one validation stack: pydantic models, with errors in the SDK's words.

Recipes (:mod:`longllava_sdk.recipes`), manifest rows (:mod:`longllava_sdk.training.data`),
adapter options (:meth:`longllava_sdk.adapters.InputAdapter.coerce_options`) and server
settings (:mod:`longllava_sdk.serving.settings`) are pydantic models or ``TypeAdapter`` s.
pydantic collects every problem at once; :func:`problems` turns its errors into
``field.path: problem`` lines and :func:`validate` raises them as one typed SDK error
(:class:`~longllava_sdk.errors.ConfigError` unless told otherwise), so no raw
``pydantic.ValidationError`` reaches a user.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)

__all__ = ["Model", "describe_error", "problems", "validate", "format_problems"]


class Model(BaseModel):
    """Base of the SDK's settings models: unknown fields are errors. Values from users go
    through :func:`validate` (one typed SDK error listing every problem); constructing a
    model in code with a bad value is a programming error (pydantic's own error)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _describe_input(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _allowed_fields(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the model found at ``loc`` below ``model`` (for "unknown field" lines)."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str) \
                and part in current.model_fields:
            current = current.model_fields[part].annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        else:
            return None
        for arg in (typing.get_args(current) or ()):  # Optional[Model] / Annotated[Model, ...]
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [name for name, info in current.model_fields.items() if not info.exclude]
    return None


def describe_error(error: Any, model: type[BaseModel] | None = None) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) in the SDK's words, without its path."""
    kind, given, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    got = f", got {_describe_input(given)}"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(model, tuple(error["loc"][:-1]))
        return "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"])).removeprefix("Value error, ")
    if kind == "assertion_error":
        return str(ctx.get("error", error["msg"])).removeprefix("Assertion failed, ")
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        return f"{_describe_input(given)} is not one of {expected}"
    if kind.startswith("int_") or kind == "int_from_float":
        return f"expected an integer{got}"
    if kind.startswith("float_"):
        return f"expected a number{got}"
    if kind.startswith("bool_"):
        return f"expected true or false{got}"
    if kind.startswith("string_") and kind not in ("string_too_short", "string_pattern_mismatch"):
        return f"expected a string{got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {type(given).__name__}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list{got}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}, got {given}"
    if kind == "finite_number":
        return f"must be a finite number, got {given}"
    return f"{error['msg'].rstrip('.')}{got}"


def problems(exc: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """``field.path: problem`` lines for every error in ``exc`` (in pydantic's order)."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"] if not (isinstance(part, str) and "[" in part)]
        where = ".".join(([prefix] if prefix else []) + loc)
        lines.append(f"{where}: {describe_error(error, model)}" if where else describe_error(error, model))
    return list(dict.fromkeys(lines))


def format_problems(where: str, lines: list[str], what: str = "") -> str:
    """``where: invalid WHAT (N problem(s)):`` and one indented line per problem."""
    head = f"{where}: invalid {what or 'settings'} ({len(lines)} problem(s)):"
    return head + "".join(f"\n  {line}" for line in lines)


def validate(model: type[M], raw: Any, *, where: str, what: str = "", context: dict[str, Any] | None = None,
             prefix: str = "", error: Callable[[str], Exception] = ConfigError) -> M:
    """``model.model_validate(raw)``; every problem in one ``error`` (default :class:`ConfigError`).

    ``prefix``: the path of ``raw`` in a larger document (``training`` for a recipe's section).
    """
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise error(format_problems(where, problems(exc, model, prefix), what)) from None
