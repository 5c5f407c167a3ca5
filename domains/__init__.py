"""Built-in domain recipes (data, not code): medical, remote_sensing, video.

Each sub-folder holds one or more ``recipe*.yaml`` files, a small real sample dataset under
``data/`` and a ``MANIFEST.md`` saying where every file came from. This module registers the
recipes through the ``longllava_register_domains`` hook, exactly like a third-party plugin
would (entry point ``domains = "longllava_domains"``). ``build_samples.py`` regenerates the
bundled data deterministically.
"""

from __future__ import annotations

from pathlib import Path

from longllava_sdk.hookspecs import hookimpl

DOMAINS_DIR = Path(__file__).resolve().parent


def recipe_paths() -> list[Path]:
    """Every bundled recipe file, sorted (``<domain>/recipe*.yaml``)."""
    return sorted(DOMAINS_DIR.glob("*/recipe*.yaml"))


@hookimpl
def longllava_register_domains() -> list[Path]:
    """The bundled domain recipes (``medical``, ``remote_sensing``, ``video`` and variants)."""
    return recipe_paths()
