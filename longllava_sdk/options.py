"""Parameter objects shared by commands, and how a call's keyword arguments fill them.

A command that needs several related options takes them as one object (``LoadOptions`` for
device / dtype / quantization, ``FinetuneArgs``, ``HaystackOptions``, ``ServerSettings``)
instead of restating the same keyword list in every signature. The CLI shows each field as a
flat flag (``--dtype``, not ``--load.dtype``); from Python, pass the object or its fields as
keyword arguments::

    Pipeline.from_pretrained(folder, **LoadOptions(dtype="bf16").kwargs())
    evaluate_data(model=folder, domain="medical", load=LoadOptions(device="cpu"))
    evaluate_data(model=folder, domain="medical", device="cpu")      # the same call

Standard library only: the CLI builds its flags from these classes before torch is imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from .errors import ConfigError, option_hint

__all__ = ["DTYPES", "LoadOptions", "is_options_class", "option_fields", "take_options", "reject_unknown"]

T = TypeVar("T")

#: The SDK's one dtype vocabulary: torch's names, with the short spellings accepted as aliases.
DTYPES: dict[str, str] = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
                          "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: Weight quantization modes (:mod:`longllava_sdk.quantization`).
QUANTIZE = ("int8",)


@dataclass(frozen=True)
class LoadOptions:
    """How a command loads a model: device, activation dtype and weight quantization.

    Attributes:
        device: auto, cpu, cuda, cuda:1...
        dtype: float32, bfloat16 or float16 (fp32, bf16, fp16 also accepted); default: bf16 on
            GPU, fp32 on CPU.
        quantize: int8: the language model's linear layers in 8 bits (Mamba and vision kept;
            docs/quantization.md).
    """

    device: str = "auto"
    dtype: str | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        dtype, quantize = self.dtype, self.quantize
        if dtype == "int8":  # `--quantize int8` (the planner's former spelling) means --quantize int8
            dtype, quantize = None, quantize or "int8"
        if dtype is not None and dtype != "auto":
            if str(dtype) not in DTYPES:
                raise ConfigError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16 "
                                  f"({option_hint('dtype', 'bfloat16')})")
            dtype = DTYPES[str(dtype)]
        if quantize is not None and quantize not in QUANTIZE:
            raise ConfigError(f"unknown quantization {quantize!r}: use {option_hint('quantize', 'int8')}")
        object.__setattr__(self, "dtype", None if dtype == "auto" else dtype)
        object.__setattr__(self, "quantize", quantize)

    def kwargs(self) -> dict[str, Any]:
        """``device`` / ``dtype`` / ``quantize`` as ``Pipeline.from_pretrained`` takes them."""
        return {"device": self.device, "dtype": self.dtype, "quantize": self.quantize}


def is_options_class(annotation: Any) -> bool:
    """A dataclass or pydantic model class: a parameter object whose fields are options."""
    return isinstance(annotation, type) and (dataclasses.is_dataclass(annotation) or hasattr(annotation, "model_fields"))


def option_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{name: (annotation, default)}`` of a parameter object class (dataclass or pydantic model).

    ``default`` is ``dataclasses.MISSING`` for a required field.
    """
    if dataclasses.is_dataclass(cls):
        import typing

        hints = typing.get_type_hints(cls)
        out: dict[str, tuple[Any, Any]] = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            out[f.name] = (hints.get(f.name, Any), default)
        return out
    return {name: (info.annotation, dataclasses.MISSING if info.is_required() else info.get_default(call_default_factory=True))
            for name, info in cls.model_fields.items()}  # type: ignore[attr-defined]


def _values(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in option_fields(type(obj))}


def take_options(kwargs: dict[str, Any], cls: type[T], given: T | None = None, default: T | None = None) -> T:
    """``given`` (else ``default``, else ``cls()``) with the fields of ``cls`` found in ``kwargs``.

    The fields used are removed from ``kwargs``; the object is rebuilt (so validated again)
    only when some were given.
    """
    names = option_fields(cls)
    picked = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
    base = given if given is not None else default
    if not picked:
        return base if base is not None else cls()
    values = _values(base) if base is not None else {}
    return cls(**{**values, **picked})


def reject_unknown(kwargs: Mapping[str, Any], function: str) -> None:
    """A ``TypeError`` like Python's own for keyword arguments no parameter object took."""
    if kwargs:
        raise TypeError(f"{function}() got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
