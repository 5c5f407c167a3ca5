"""Names a package exports that load their module on first use (PEP 562), so importing it stays light.

``import longllava_sdk`` and ``longllava_sdk.processing`` name classes whose modules import
torch and transformers; :func:`lazy_exports` gives the package a module ``__getattr__`` that
imports them when first asked for, and a ``__dir__`` listing them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Iterable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, lazy: Mapping[str, str], namespace: dict[str, Any],
                 public: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``.

    Args:
        package: the package's ``__name__`` (relative module paths resolve against it).
        lazy: exported name -> module that defines it (``".processor"``).
        namespace: the package's ``globals()``: a loaded name is cached there, so the next
            access is a plain attribute.
        public: the package's ``__all__``, for ``dir()``.
    """
    names = sorted(public)

    def __getattr__(name: str) -> Any:
        if name in lazy:
            value = getattr(importlib.import_module(lazy[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
