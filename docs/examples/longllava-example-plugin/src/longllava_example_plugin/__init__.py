"""Example longllava-sdk plugin.

Installed next to the SDK, this package is found through its ``longllava_sdk`` entry point
(see ``pyproject.toml``) and adds:

* the ``npy_volume`` input adapter (``.npy`` stacks of 2-D arrays -> ``volume`` media),
* the ``example_linear_probe`` task head and the ``example_severity`` regression head (its
  own label format: a score in ``labels`` or in the answer text),
* the ``longllava-sdk npy-info`` command,
* an expert for the prompt (``longllava_expert_findings``): a Hounsfield-unit screen of CT
  volumes (tissue composition, lung-nodule candidates), :mod:`.lung_expert`.

The SDK imports this module when it builds its plugin manager, so keep the import cheap:
the hook functions below only hand over classes and functions.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from longllava_sdk import hookimpl

from .npy_volume import NpyVolumeAdapter, describe
from .probe_head import LinearProbeHead
from .severity_head import SeverityHead

__version__ = "0.3.1"


@hookimpl
def longllava_register_adapters() -> list[type]:
    return [NpyVolumeAdapter]


@hookimpl
def longllava_register_heads() -> list[type]:
    return [LinearProbeHead, SeverityHead]


def npy_info(path: str) -> int:
    """Print the shape, dtype and value range of a .npy volume as JSON.

    Args:
        path: the .npy file, an array of shape (slices, height, width).
    """
    print(json.dumps(describe(path)))
    return 0


@hookimpl
def longllava_register_commands() -> list[Callable[..., Any]]:
    return [npy_info]


@hookimpl
def longllava_expert_findings(media: Any) -> str | None:
    from .lung_expert import lung_findings  # scipy / pydicom load only when a prompt has media

    return lung_findings(media)
