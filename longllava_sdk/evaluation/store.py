"""The run folder of an evaluation: resumable item log, identity check, atomic report.

::

    <output>/
      run.json        what this run evaluates: mode, every argument that changes a score,
                      the model folder's files (name, size, mtime) and the haystack sources
      items.jsonl     one JSON line per scored item, appended (and fsync'ed) as it finishes
      report.json     per-item predictions + aggregate metrics (written atomically at the end)
      heatmap.png     (needle-in-a-haystack) accuracy by number of images and needle depth

Resume: a rerun with the same identity reads ``items.jsonl`` and scores only the items
that are not in it; an interrupted run (Ctrl-C, SIGKILL, a crash) therefore continues where
it stopped, and a finished one just rewrites its report. A line cut short by a kill is
dropped (and cut off the file) and that item is scored again. A rerun whose identity
differs -- another model, other weights in the same folder, other arguments -- is refused
with the differences listed, unless ``overwrite`` starts the folder afresh; without an
explicit output folder the default one is named after the identity's hash, so changed
arguments simply start a new folder. ``overwrite`` deletes the run's own files (those
above) and nothing else. What decides a score is in the identity; how it is computed is not
(``device``, the progress bar), so a run interrupted on a GPU may be finished on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, option_hint

__all__ = ["RunStore", "identity_hash", "folder_fingerprint", "file_fingerprint", "atomic_write_text",
           "atomic_write_bytes", "RUN_FILE", "ITEMS_FILE", "REPORT_FILE", "HEATMAP_FILE", "STORE_VERSION"]

RUN_FILE = "run.json"
ITEMS_FILE = "items.jsonl"
REPORT_FILE = "report.json"
HEATMAP_FILE = "heatmap.png"
#: The files a run writes (``overwrite`` deletes these and nothing else).
RUN_FILES = (RUN_FILE, ITEMS_FILE, REPORT_FILE, HEATMAP_FILE)
#: Bumped when the meaning of a stored item changes (old folders are then refused, not misread).
STORE_VERSION = 1


def _canonical(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples -> lists, keys -> strings), for comparisons."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def identity_hash(identity: dict[str, Any]) -> str:
    """A short stable hash of an identity (names default output folders)."""
    return hashlib.sha256(json.dumps(_canonical(identity), sort_keys=True).encode()).hexdigest()[:10]


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns"}`` of a file: changes when the file is rewritten."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def folder_fingerprint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The files of a model folder by name with size and mtime (weights are not hashed: a
    9B checkpoint would take minutes; any rewrite changes the mtime)."""
    folder = Path(folder).resolve()
    files = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_file():
                stat = path.stat()
                files[path.name] = [stat.st_size, stat.st_mtime_ns]
    return {"path": str(folder), "files": files}


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename:
    a reader (or a crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates 0600; a report is an ordinary file (the umask decides, as for open())
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{where}: not set before, now {json.dumps(new[key])[:80]}")
            elif key not in new:
                out.append(f"{where}: was {json.dumps(old[key])[:80]}, now not set")
            else:
                out.extend(_differences(old[key], new[key], where))
        return out
    if old != new:
        return [f"{prefix}: was {json.dumps(old)[:80]}, now {json.dumps(new)[:80]}"]
    return []


class RunStore:
    """One evaluation's folder (see the module docstring).

    Args:
        directory: the run folder (created if missing).
        identity: JSON facts that decide every score (mode, arguments, model files, data).
        overwrite: delete a previous run's files in ``directory`` and start again.

    Raises:
        ConfigError: ``directory`` holds a run with another identity, or files that are not
            an evaluation run's (and ``overwrite`` is false).
    """

    def __init__(self, directory: str | os.PathLike[str], identity: dict[str, Any], *, overwrite: bool = False) -> None:
        self.directory = Path(directory)
        self.identity = _canonical({"store_version": STORE_VERSION, **identity})
        run_file = self.directory / RUN_FILE
        if overwrite and self.directory.exists():
            self._clear()
        if run_file.is_file():
            try:
                previous = json.loads(run_file.read_text())
            except ValueError:
                previous = None
            if previous != self.identity:
                changes = (_differences(previous, self.identity) if isinstance(previous, dict)
                           else [f"{RUN_FILE} is unreadable"])
                shown = "\n  ".join(changes[:12]) + (f"\n  ... {len(changes) - 12} more" if len(changes) > 12 else "")
                raise ConfigError(f"{self.directory} holds an evaluation with other settings:\n  {shown}\n"
                                  f"rerun with the same settings to resume it, pass {option_hint('overwrite')} to "
                                  f"start it again, or choose another {option_hint('output', 'DIR')}")
        elif self.directory.exists() and any(self.directory.iterdir()) and not overwrite:
            raise ConfigError(f"{self.directory} is not empty and holds no evaluation run ({RUN_FILE}); choose another "
                              f"{option_hint('output', 'DIR')}, or pass {option_hint('overwrite')} to write the run "
                              "next to what is there")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_file, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")

    def _clear(self) -> None:
        """Delete this run's own files (and half-written temporaries); anything else stays."""
        for path in self.directory.iterdir():
            own = path.name in RUN_FILES or any(path.name.startswith(f".{name}.") for name in RUN_FILES)
            if own and path.is_file():
                path.unlink()

    @property
    def items_path(self) -> Path:
        return self.directory / ITEMS_FILE

    def completed(self) -> dict[str, dict[str, Any]]:
        """Items already scored, by id (the first record of an id wins).

        A last line without its newline or not valid JSON (the process was killed while
        writing it) is cut off the file, so the next append starts on a clean line.
        """
        path = self.items_path
        if not path.is_file():
            return {}
        data = path.read_bytes()
        records: dict[str, dict[str, Any]] = {}
        good_end = 0
        position = 0
        for line in data.splitlines(keepends=True):
            position += len(line)
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                break
            if isinstance(record, dict) and "id" in record:
                records.setdefault(str(record["id"]), record)
            good_end = position
        if good_end < len(data):
            with path.open("r+b") as stream:
                stream.truncate(good_end)
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Add one scored item; it is on disk (fsync) when this returns."""
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self.items_path.open("a", encoding="utf-8") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())

    def write_report(self, report: dict[str, Any]) -> Path:
        """``report.json``, atomically."""
        return atomic_write_text(self.directory / REPORT_FILE, json.dumps(report, indent=2, default=str) + "\n")

    def path(self, name: str) -> Path:
        return self.directory / name
