"""The one way the SDK opens a local file: regular files only, inside the allowed root, never a URL.

Every file the SDK reads (an adapter's source, each file of a DICOM series or image folder,
a training manifest or recipe, a model folder's config and weights) goes through
:func:`open_regular`, or :func:`check_regular` where a third-party library insists on opening
the path itself. Why a stat is not enough: ``open()`` on a FIFO blocks until a writer appears
(forever), ``/dev/zero`` never ends, and a socket or device is not data. So:

* the path is opened with ``O_NONBLOCK`` (opening a FIFO returns at once instead of
  waiting for a writer; ``O_NOCTTY`` keeps a terminal from becoming ours), then
  ``fstat`` on the *opened* descriptor must say ``S_ISREG``, then ``O_NONBLOCK`` is cleared
  and the descriptor is read like any file. What is checked is what is read: a file swapped
  for a FIFO between a check and an open cannot slip through;
* folder walks (:func:`regular_files`) ``lstat`` each entry: a FIFO, socket or device found in
  a folder is an error naming it (not skipped silently: a series with a hole is not the
  series), and symlinks are followed only to regular files inside the root;
* URLs, protocols (``http:``, ``rtmp:``...) and GDAL's ``/vsi*`` virtual paths are refused
  before any library sees them (:func:`refuse_remote`): nothing is fetched behind the
  caller's back;
* ``root``: when given, the file's real path (symlinks resolved) must lie inside it
  (:class:`~longllava_sdk.errors.OutsideRootError`). Callers pass the root of whatever jail
  is in force (the adapters' :func:`~longllava_sdk.adapters.allowed_root`, a data root, the
  server's root); ``None`` means no confinement.

Errors are :class:`~longllava_sdk.errors.SpecialFileError` (a FIFO, socket, device or
folder where a file is read) and :class:`~longllava_sdk.errors.AdapterError` (missing file,
URL), each naming the path, raised within milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import AdapterError, OutsideRootError, SpecialFileError
from .root_jail import OutsideRoot, confine_to, real_root

PathLike = str | os.PathLike[str]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+:")
#: Flags of the checking open: never block on a FIFO, never adopt a terminal, never leak to children.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def describe_mode(mode: int) -> str:
    """What a ``st_mode`` names, in words (``"a FIFO (named pipe)"``, ``"a folder"``...)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def _refuse_kind(path: PathLike, mode: int, what: str) -> SpecialFileError:
    return SpecialFileError(path, f"is {describe_mode(mode)}, not a regular file; only regular files are read as "
                                  f"a {what} (a FIFO or device could block or never end)")


def refuse_remote(source: PathLike, *, what: str = "file") -> Path:
    """``Path(source)``; a URL, a protocol (``http:``, ``rtmp:``...) or a GDAL ``/vsi*`` path is an
    :class:`~longllava_sdk.errors.AdapterError` (the SDK reads local files only)."""
    text = os.fspath(source)
    if _URL.match(text) or text.startswith("/vsi"):
        raise AdapterError(text, f"only local {what}s are read; URLs, protocols and virtual file systems are refused")
    return Path(text)


def inside_root(path: PathLike, root: PathLike | None) -> Path:
    """``Path(path)``, checked to resolve (symlinks followed) inside ``root`` (``None``: anywhere):
    :func:`longllava_sdk.root_jail.confine_to`, worded as an
    :class:`~longllava_sdk.errors.OutsideRootError`."""
    candidate = Path(path)
    if root is None:
        return candidate
    jail = real_root(root)
    try:
        confine_to(candidate, jail, base=Path.cwd())
    except OutsideRoot as out:
        via = " through a symlink" if out.real != out.joined else ""
        raise OutsideRootError(candidate, f"resolves{via} to {out.real}, outside the allowed root {jail}; only "
                                          "files inside it are read") from None
    except (OSError, ValueError) as exc:
        raise AdapterError(candidate, f"cannot resolve the path: {exc}") from None
    return candidate


def refuse_special(path: PathLike, *, what: str = "file") -> None:
    """A :class:`~longllava_sdk.errors.SpecialFileError` when ``path`` exists and is neither a
    regular file nor a folder (a FIFO, socket or device); missing paths and URLs pass (the caller
    reports them). One ``stat``: never opens, never blocks."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse_kind(path, mode, what)


def check_regular(path: PathLike, *, root: PathLike | None = None, what: str = "file") -> os.stat_result:
    """The ``stat`` of ``path`` (symlinks followed), which must be a regular file inside ``root``.

    For libraries that open the path themselves (GDAL, nibabel, FFmpeg...): check here, and
    prefer :func:`open_regular` and handing the library the open file where it accepts one.

    Raises:
        AdapterError: no such file (or it cannot be stat-ed: a name too long, a loop of links).
        SpecialFileError: a FIFO, socket, device or folder.
        OutsideRootError: it resolves outside ``root``.
    """
    inside_root(path, root)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise AdapterError(path, "no such file") from None
    except OSError as exc:
        raise AdapterError(path, f"cannot read it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _refuse_kind(path, info.st_mode, what)
    return info


def open_regular(path: PathLike, *, root: PathLike | None = None, what: str = "file") -> BinaryIO:
    """``path`` opened for binary reading, after checking on the opened descriptor that it is a
    regular file (see the module docstring); the caller closes it (``with open_regular(p) as f``).

    Raises the errors of :func:`check_regular`.
    """
    inside_root(path, root)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise AdapterError(path, "no such file") from None
    except IsADirectoryError:
        raise SpecialFileError(path, f"is a folder, not a regular {what}") from None
    except OSError as exc:  # ENXIO: a socket; ENAMETOOLONG, ELOOP, EACCES...
        if os.path.exists(path):
            with contextlib.suppress(OSError):
                mode = os.stat(path).st_mode
                if not stat.S_ISREG(mode):
                    raise _refuse_kind(path, mode, what) from None
        raise AdapterError(path, f"cannot open it: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse_kind(path, mode, what)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # a regular file: ordinary blocking reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def local_file(source: PathLike, *, root: PathLike | None = None, what: str = "file") -> Path:
    """The one check of "one local file" sources: not a URL (:func:`refuse_remote`), a regular
    file (:func:`check_regular`), inside ``root``. Returns ``Path(source)``."""
    path = refuse_remote(source, what=what)
    check_regular(path, root=root, what=what)
    return path


def read_bytes(path: PathLike, *, root: PathLike | None = None, limit: int | None = None,
               what: str = "file") -> bytes:
    """The bytes of a regular file (:func:`open_regular`); more than ``limit`` bytes is an error
    (checked on the opened file's size before reading)."""
    with open_regular(path, root=root, what=what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if limit is not None and size > limit:
            raise AdapterError(path, f"is {size:,} bytes, more than the {limit:,} bytes a {what} may have")
        return handle.read() if limit is None else handle.read(limit + 1)


def read_text(path: PathLike, *, root: PathLike | None = None, limit: int | None = None, what: str = "file",
              encoding: str = "utf-8") -> str:
    """The text of a regular file (:func:`read_bytes`, decoded)."""
    data = read_bytes(path, root=root, limit=limit, what=what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise AdapterError(path, f"is not {encoding} text ({exc})") from None


def regular_files(folder: PathLike, *, root: PathLike | None = None, recursive: bool = False,
                  skip_hidden: bool = True, suffixes: tuple[str, ...] | None = None,
                  what: str = "file") -> Iterator[Path]:
    """The regular files of ``folder`` (sorted by name per folder; sub-folders after files with
    ``recursive``), each ``lstat``-ed: a FIFO, socket or device among them (that ``suffixes``
    would select) is a :class:`~longllava_sdk.errors.SpecialFileError` naming it; a symlink
    must lead to a regular file (or, recursing, a folder) inside ``root``."""
    inside_root(folder, root)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise AdapterError(folder, f"cannot list the folder: {exc.strerror or exc}") from None
    subfolders = []
    for entry in entries:
        if skip_hidden and entry.name.startswith("."):
            continue
        path = Path(entry.path)
        info = entry.stat(follow_symlinks=False)  # lstat
        linked = stat.S_ISLNK(info.st_mode)
        if linked:
            inside_root(path, root)
            try:
                info = os.stat(path)
            except OSError:
                raise AdapterError(path, "is a broken symbolic link") from None
        if stat.S_ISDIR(info.st_mode):
            if recursive and not linked:  # as os.walk: linked folders are not entered (no loops)
                subfolders.append(path)
            continue
        if suffixes is not None and not entry.name.lower().endswith(suffixes):
            continue
        if not stat.S_ISREG(info.st_mode):
            raise _refuse_kind(path, info.st_mode, what)
        inside_root(path, root)
        yield path
    for sub in subfolders:
        yield from regular_files(sub, root=root, recursive=True, skip_hidden=skip_hidden, suffixes=suffixes,
                                 what=what)
