"""Paths confined to a root folder: the one check behind the adapters' allowed root
(:func:`longllava_sdk.adapters.confine`), training-data paths
(:func:`longllava_sdk.training.data.resolve_data_path`) and the server's ``--root``
(:class:`longllava_sdk.serving.security.RootJail`). Each caller words the refusal as its own
typed error; the rule is written once: every symlink resolved, the real path must be the
root or below it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class OutsideRoot(Exception):
    """``path`` resolves outside ``root``.

    Attributes:
        real: where it resolves (every symlink followed).
        joined: the path before symlinks were followed (joined to the base, normalised).
    """

    def __init__(self, real: Path, joined: Path, root: Path) -> None:
        self.real, self.joined, self.root = real, joined, root
        super().__init__(f"{joined} resolves to {real}, outside {root}")

    @property
    def through_symlink(self) -> bool:
        """The path itself lies inside the root; a symlink on the way leads out."""
        return is_inside(self.joined, self.root)


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or lies below it (both already real)."""
    return path == root or root in path.parents


def real_root(root: str | os.PathLike[str]) -> Path:
    """The root with every symlink resolved (what :func:`confine_to` compares against)."""
    return Path(os.path.realpath(os.fspath(root)))


def confine_to(path: str | os.PathLike[str], root: Path, *, base: Path | None = None) -> Path:
    """The real path of ``path`` (joined to ``base``, default ``root``, when relative).

    ``root`` must be real (:func:`real_root`).

    Raises:
        OutsideRoot: the real path leaves ``root``.
        OSError: a symlink loop (``ELOOP``), or a path the file system cannot use (too long...).
        ValueError: a path no file system can use (a NUL character).
    """
    candidate = Path(path)
    joined = Path(os.path.abspath(candidate if candidate.is_absolute() else (base or root) / candidate))
    real = Path(os.path.realpath(joined))
    if real.is_symlink():  # realpath stops where links loop
        raise OSError(errno.ELOOP, "symlink loop", str(joined))
    if not is_inside(real, root):
        raise OutsideRoot(real, joined, root)
    return real
