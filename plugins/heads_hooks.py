"""The ``heads`` plugin: registers the built-in task heads of :mod:`longllava_plugins.heads`.

The heads are ``torch`` modules; this entry-point module imports them only when the plugin
manager asks for heads, so loading the plugins (``longllava-sdk --help``, ``plugins``, ``plan``)
does not import torch. A third-party plugin with heavy heads can do the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from longllava_sdk.hookspecs import hookimpl

if TYPE_CHECKING:
    from longllava_sdk.heads import TaskHead


@hookimpl
def longllava_register_heads() -> list[type[TaskHead]]:
    """The built-in heads: ``generate``, ``multilabel``, ``classify``."""
    from .heads import ClassifyHead, GenerateHead, MultiLabelHead

    return [GenerateHead, MultiLabelHead, ClassifyHead]
