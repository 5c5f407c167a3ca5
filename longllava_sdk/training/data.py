"""Training data: reading, whole-dataset validation and the lazy ``TrainingDataset``.

Two input forms (details and examples in ``docs/data_formats.md``):

* **LLaVA conversations** (``.json`` list or ``.jsonl``): ``id``, ``image`` (a path or a list),
  optional ``video`` / ``volume`` / ``tiled`` sources (a path, a list of paths, or
  ``{"path": ..., "adapter": ..., "options": {...}}``), ``conversations`` with
  ``from: human|gpt`` and one ``<image>`` marker per source, optional ``labels``.
* **Domain manifests** (``.csv`` or ``.jsonl``): one ``source`` per row (+ optional
  ``adapter``, ``options``), ``question`` and ``answer``, or ``labels`` for a classification
  head (one label for ``classify``; ``;``-separated or a list for ``multilabel``), optional
  ``id`` and ``split``. The recipe's prompt templates turn a row into a conversation.

Validation (:func:`validate_rows`) checks *every* row before training and raises one
:class:`~longllava_sdk.errors.DatasetError` listing all bad rows: malformed rows, empty
conversations / no assistant answer, unknown labels, ``<image>`` markers that do not match
the sources, paths that are missing or leave the data root, sources no adapter can read
(the adapter's message included), more images than ``max_images``, and samples longer than
``max_length`` on their own (counted with ``tokens_per_image`` tokens per image).

Media cost: an adapter has no header-only "probe", and both the image count (which fixes the
token length) and whether pixel data is readable are only known after a load. So validation
loads each source once, through its adapter with the recipe's options and the per-sample
``max_images`` budget, and keeps the encoded sample in a :class:`SampleCache` bounded by a
number of images (default 256). :class:`TrainingDataset` takes a cached sample on its first
access instead of decoding again; samples that did not fit in the cache are decoded again
when training reaches them. Only the per-row lengths are kept for every row.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Sequence

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch.utils.data import Dataset

from .. import local_files
from ..adapters import allowed_root
from ..errors import AdapterError, ConfigError, DatasetError, InputError, LongLLaVAError, ProtocolError
from ..heads import TaskHead
from ..isolation import DecodeLimits, run_isolated
from ..media import Media
from ..registry import available_adapters, claiming_adapter, get_head_class, resolve_adapter
from ..processing import protocol
from ..processing.processor import EncodedSample, LongLLaVAProcessor
from ..experts import check_experts, selected_experts
from ..recipes import PromptTemplates, Recipe
from ..root_jail import OutsideRoot, confine_to, real_root
from ..validation import describe_error

__all__ = [
    "SOURCE_KEYS",
    "EVAL_SPLITS",
    "MediaSource",
    "DataRow",
    "TrainingSample",
    "SampleCache",
    "MediaLoader",
    "TrainingDataset",
    "PreparedData",
    "read_rows",
    "resolve_data_path",
    "validate_rows",
    "split_rows",
    "prepare_datasets",
    "as_tensor_head_labels",
]

#: LLaVA row keys holding media sources, in the order their ``<image>`` markers are matched.
SOURCE_KEYS: tuple[str, ...] = ("image", "video", "volume", "tiled")
#: ``split`` values that send a row to the evaluation set (anything else trains).
EVAL_SPLITS: frozenset[str] = frozenset({"eval", "evaluation", "val", "valid", "validation", "test", "dev"})
#: The media kind a LLaVA row key asks for (only adapters of that kind are considered); a
#: manifest's ``source`` may be read by an adapter of any kind.
KIND_OF_KEY: dict[str, str | None] = {"image": "images", "video": "video", "volume": "volume", "tiled": "tiled",
                                      "source": None}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# ------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaSource:
    """One media source of a row, as written in the data file (paths not yet resolved).

    Attributes:
        path: a path relative to the data root (or absolute inside it), or a tuple of them
            (e.g. the files of one DICOM series).
        key: where it came from: ``image``, ``video``, ``volume``, ``tiled`` or ``source``.
        adapter: adapter name given in the row, if any.
        options: adapter options given in the row (override the recipe's).
    """

    path: str | tuple[str, ...]
    key: str = "source"
    adapter: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass
class DataRow:
    """One sample as read from a data file, before media are loaded.

    Attributes:
        id: the row's ``id`` (or ``<file stem>-<index>``).
        file: the data file it came from.
        where: its location in the file (``line 7`` / ``item 3``), for error messages.
        turns: ``[{"role": "user"|"assistant"|"system", "content": str}, ...]``.
        sources: media sources in ``<image>`` marker order.
        labels: head labels (``None`` when the row has none).
        split: the row's ``split`` value, if any.
        length: token length (media included), set by validation.
        num_images: images after adapter sampling, set by validation.
        problems: structural problems found while reading (reported by validation).
    """

    id: str
    file: Path
    where: str
    turns: list[dict[str, str]] = field(default_factory=list)
    sources: list[MediaSource] = field(default_factory=list)
    labels: list[str] | None = None
    split: str | None = None
    length: int | None = None
    num_images: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.file}::{self.where}"

    def describe(self) -> str:
        return f"{self.file.name} {self.where} (id {self.id!r})"


@dataclass
class TrainingSample(EncodedSample):
    """An :class:`EncodedSample` plus what training needs about it.

    Attributes:
        input_ids, labels: ``list[int]`` of equal length (labels ``-100`` outside answers).
        images: PIL images in placeholder order.
        head_labels: class index (``classify``), multi-hot ``list[float]`` (``multilabel``)
            or ``None`` (``generate``).
        sample_id: the row id.
    """

    head_labels: int | list[float] | None = None
    sample_id: str = ""


def read_rows(path: str | os.PathLike[str], *, recipe: Recipe | None = None) -> list[DataRow]:
    """Parse a data file into rows; malformed rows carry their problems (nothing is raised for them).

    Args:
        path: ``.json`` (a list of LLaVA rows), ``.jsonl`` (LLaVA or manifest rows) or
            ``.csv`` (manifest rows with a ``source`` column).
        recipe: a :class:`~longllava_sdk.recipes.Recipe` whose prompt templates and labels
            turn manifest rows into conversations (defaults when ``None``).

    Raises:
        InputError: the file itself cannot be read or parsed as a whole (missing file,
            invalid JSON document, CSV without a ``source`` column, unknown extension, no
            rows): one message about the file, not a row report.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "data file does not exist")
    suffix = path.suffix.lower()
    try:  # a regular file only: a FIFO or device named as the data file is refused, never blocks
        text = local_files.read_text(path, what="data file")
    except AdapterError as exc:
        raise InputError(path, f"cannot read data file: {exc.problem}") from None
    raw_rows: list[tuple[str, Any]] = []
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON: {exc}") from exc
        except RecursionError:
            raise InputError(path, "JSON nested too deeply to be a data file") from None
        if not isinstance(data, list):
            raise InputError(path, f"a .json data file must hold a list of rows, got {type(data).__name__}")
        raw_rows = [(f"item {i}", row) for i, row in enumerate(data)]
    elif suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw_rows.append((f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raw_rows.append((f"line {number}", _Invalid(f"not valid JSON: {exc.msg} at column {exc.colno}")))
            except RecursionError:
                raw_rows.append((f"line {number}", _Invalid("JSON nested too deeply to be a row")))
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "source" not in [f.strip() for f in reader.fieldnames]:
            raise InputError(path, f"a CSV manifest needs a 'source' column, got columns {reader.fieldnames}")
        for number, row in enumerate(reader, start=2):  # line 1 is the header
            if None in row:
                raw_rows.append((f"line {number}", _Invalid(f"{len(row[None])} more field(s) than header columns")))
                continue
            raw_rows.append((f"line {number}", {k.strip(): (v.strip() if isinstance(v, str) else v)
                                                for k, v in row.items()}))
    else:
        raise InputError(path, f"unknown data file type {suffix!r}; use .json, .jsonl or .csv")
    rows = [_parse_row(raw, path, where, index, recipe) for index, (where, raw) in enumerate(raw_rows)]
    if not rows:
        raise InputError(path, "data file holds no rows")
    return rows


class _Invalid:
    def __init__(self, problem: str) -> None:
        self.problem = problem


# -- row shapes: pydantic models (longllava_sdk.validation); every problem of a row is listed --

def _labels(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValueError(f"'labels' must be a string (';'-separated) or a list of strings, got {value!r}")


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


Labels = Annotated[list[str] | None, BeforeValidator(_labels)]
Text = Annotated[str | None, BeforeValidator(_text)]


def _paths(value: Any, what: str) -> str | tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        return os.fspath(value)
    if isinstance(value, list) and value and all(isinstance(p, str) and p for p in value):
        return tuple(value)
    raise ValueError(f"{what} must be a path (or a list of paths), got {value!r}")


def _adapter_name(value: Any, what: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an adapter name, got {value!r}")
    return value


def _options(value: Any, what: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):  # CSV: a JSON object in a cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{what} must be a JSON object, got {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object, got {value!r}")
    return value


class _Source(BaseModel):
    """``{"path", "adapter", "options"}``: one media source written as an object."""

    model_config = ConfigDict(extra="forbid")
    key: str = "source"
    path: str | tuple[str, ...]
    adapter: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, given: Any) -> Any:
        key, raw = given["__key__"], given["__value__"]  # see _LlavaRow._gather_sources
        if isinstance(raw, (str, os.PathLike)):
            return {"key": key, "path": _paths(raw, f"'{key}'")}
        if not isinstance(raw, dict):
            raise ValueError(f"'{key}' must be a path, a list of paths or an object with 'path', got {raw!r}")
        unknown = sorted(set(raw) - {"path", "adapter", "options"})
        if unknown:
            raise ValueError(f"'{key}' has unknown field(s) {unknown} (allowed: path, adapter, options)")
        return {"key": key, "path": _paths(raw.get("path"), f"'{key}.path'"),
                "adapter": _adapter_name(raw.get("adapter"), f"'{key}.adapter'"),
                "options": _options(raw.get("options"), f"'{key}.options'")}

    def media(self) -> MediaSource:
        return MediaSource(self.path, self.key, self.adapter, tuple(sorted(self.options.items())))


class _Turn(BaseModel):
    """A LLaVA turn: ``from`` (``human`` / ``gpt`` / ``system``) or ``role``, and ``value`` or ``content``."""

    role: str
    content: str

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, raw: Any) -> Any:  # messages complete "turn N ..."
        if not isinstance(raw, dict):
            raise ValueError("must be an object with 'from' and 'value'")
        said = raw.get("from", raw.get("role", ""))
        role = protocol.ROLE_ALIASES.get(str(said).lower())
        if role is None:
            raise ValueError(f"has unknown 'from' {raw.get('from')!r} (human, gpt or system)")
        value = raw.get("value", raw.get("content"))
        if not isinstance(value, str):
            raise ValueError(f"('{raw.get('from')}') has no string 'value'")
        return {"role": role, "content": value}


class _RowBase(BaseModel):
    model_config = ConfigDict(extra="ignore")  # data files carry fields of their own (``id`` is read first)
    split: Text = None
    labels: Labels = None


class _LlavaRow(_RowBase):
    """A LLaVA conversation row."""

    conversations: list[_Turn]
    sources: list[_Source] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _gather_sources(cls, raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        sources: list[Any] = []
        for key in SOURCE_KEYS:
            value = raw.get(key)
            if value in (None, "", []):
                continue
            if isinstance(value, list) and key == "image":  # LLaVA: a list of images, one <image> marker each
                sources.extend({"__key__": key, "__value__": item} for item in value)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):  # one multi-file source
                sources.append({"__key__": key, "__value__": {"path": value}})
            else:
                sources.append({"__key__": key, "__value__": value})
        raw["sources"] = sources
        conversations = raw.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise ValueError("empty conversation: 'conversations' must be a non-empty list")
        return raw

    @field_validator("conversations")
    @classmethod
    def _system_first(cls, turns: list[_Turn]) -> list[_Turn]:
        late = [i for i, turn in enumerate(turns) if turn.role == "system" and i]
        if late:
            raise ValueError(f"turn {late[0]}: a system turn may only open the conversation")
        return turns


class _ManifestRow(_RowBase):
    """A domain manifest row: one ``source`` (+ ``adapter``, ``options``), ``question``,
    ``answer`` or ``labels``."""

    source: str | tuple[str, ...]
    adapter: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    question: Text = None
    answer: Text = None

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        return _paths(value, "'source'")

    @field_validator("adapter", mode="before")
    @classmethod
    def _adapter(cls, value: Any) -> Any:
        return _adapter_name(value, "'adapter'")

    @field_validator("options", mode="before")
    @classmethod
    def _cell_options(cls, value: Any) -> Any:
        return _options(value, "'options'")


def _problems(exc: ValidationError) -> list[str]:
    """A row's problems in the data file's words: the rows' own messages name their field."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(p) for p in error["loc"]]
        message = describe_error(error)
        if error["type"] != "value_error":
            lines.append(f"'{'.'.join(loc)}': {message}" if loc else message)
        elif len(loc) == 2 and loc[0] == "conversations":
            lines.append(f"turn {loc[1]} {message}")
        else:
            lines.append(message)
    return list(dict.fromkeys(lines))


def _parse_row(raw: Any, file: Path, where: str, index: int, recipe: Recipe | None) -> DataRow:
    row = DataRow(id=f"{file.stem}-{index}", file=file, where=where)
    if isinstance(raw, _Invalid):
        row.problems.append(raw.problem)
        return row
    if not isinstance(raw, dict):
        row.problems.append(f"a row must be an object, got {type(raw).__name__}")
        return row
    if raw.get("id") not in (None, ""):  # named in its problems even when the rest is wrong
        row.id = str(raw["id"])
    shape = _LlavaRow if "conversations" in raw else _ManifestRow if "source" in raw else None
    if shape is None:
        row.problems.append("row has neither 'conversations' (LLaVA form) nor 'source' (manifest form)")
        return row
    try:
        parsed = shape.model_validate(raw)
    except ValidationError as exc:
        row.problems.extend(_problems(exc))
        return row
    row.split = parsed.split.strip().lower() if parsed.split else None
    row.labels = parsed.labels
    if isinstance(parsed, _LlavaRow):
        row.sources = [source.media() for source in parsed.sources]
        row.turns = [{"role": turn.role, "content": turn.content} for turn in parsed.conversations]
    else:
        row.sources = [MediaSource(parsed.source, "source", parsed.adapter, tuple(sorted(parsed.options.items())))]
        _manifest_turns(parsed, row, recipe)
    return row


def _manifest_turns(parsed: _ManifestRow, row: DataRow, recipe: Recipe | None) -> None:
    prompts = recipe.prompts if recipe is not None else PromptTemplates()
    labels_all = list(recipe.head.labels) if recipe is not None else []
    values = {"id": row.id, "label_list": ", ".join(labels_all), "labels": ", ".join(row.labels or [])}
    question = parsed.question if parsed.question and parsed.question.strip() else \
        prompts.render(prompts.question, values)
    values["question"] = question
    if parsed.answer and parsed.answer.strip():
        values["answer"] = parsed.answer
        reply = prompts.render(prompts.answer, values)
    elif row.labels is not None:
        reply = prompts.render(prompts.label_answer, values) if row.labels else prompts.no_labels
    else:
        row.problems.append("no assistant turn: the row has neither 'answer' nor 'labels'")
        reply = ""
    row.turns = [{"role": "user", "content": prompts.render(prompts.user, values)},
                 {"role": "assistant", "content": reply}]


# ------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------


def resolve_data_path(value: str | os.PathLike[str], root: str | os.PathLike[str]) -> Path:
    """Resolve a path from a data file against the data root; it may not leave the root.

    Relative paths are joined to ``root``; absolute paths are allowed only inside it.
    Symlinks are resolved before the check, so a link pointing outside the root is refused.

    Raises:
        InputError: a URL, a path leaving the root, or a path that does not exist.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(repr(value)[:200], f"a path must be a string, got {type(value).__name__}")
    text = os.fspath(value)
    if _URL.match(text) or text.startswith("/vsi"):
        raise InputError(text, "URLs and virtual file systems are not allowed in training data; use local files")
    if "\x00" in text:
        raise InputError(repr(text), "a path cannot contain a NUL character")
    root_real = real_root(root)
    candidate = Path(text).expanduser()
    try:
        real = confine_to(candidate, root_real)
        exists = real.exists()
    except OutsideRoot as out:
        how = "absolute path" if candidate.is_absolute() else "path"
        via = " through a symlink" if out.through_symlink else ""
        raise InputError(text, f"{how} leaves the data root {root_real}{via}") from None
    except (OSError, ValueError) as exc:  # a name too long for the filesystem, an unusable string
        raise InputError(text[:200], f"unusable path: {exc}") from None
    if not exists:
        raise InputError(text, f"file not found (looked for {real})")
    return real


# ------------------------------------------------------------------------------------------
# Media loading
# ------------------------------------------------------------------------------------------


class MediaLoader:
    """Loads a row's sources through the adapters, with the recipe's options and budgets.

    Args:
        root: the data root (paths are resolved with :func:`resolve_data_path`).
        recipe: supplies per-adapter options and ``max_images``; ``None`` for plain defaults.
        max_images: image budget of one *sample* (all its sources together); ``None`` uses
            the recipe's ``max_images``; both ``None`` leaves budgets to the adapters.
        adapter_options: options given for the run (``--adapter-option``); each adapter takes
            those it declares, over the recipe's. An option no installed adapter declares is an
            error.
        isolate_decoding: read every source in a killable worker process under OS limits
            (:mod:`~longllava_sdk.isolation`; ``True``: the default :class:`DecodeLimits`), for
            data you do not trust; off by default (a fork per source).
    """

    def __init__(self, root: str | os.PathLike[str], recipe: Recipe | None = None, max_images: int | None = None,
                 adapter_options: dict[str, Any] | None = None,
                 isolate_decoding: bool | DecodeLimits | None = False) -> None:
        self.isolation: DecodeLimits | None = (
            (DecodeLimits() if isolate_decoding is True else isolate_decoding) or None)
        self.root = Path(os.path.realpath(root))
        self.recipe = recipe
        self.max_images = max_images if max_images is not None else getattr(recipe, "max_images", None)
        #: the expert plugins whose findings enter the prompts (the recipe's ``experts``; None: all installed)
        self.experts = check_experts(getattr(recipe, "experts", None))
        self.adapter_options = dict(adapter_options or {})
        if self.adapter_options:
            declared = {name for cls in available_adapters().values() for name in cls.options()}
            unknown = sorted(set(self.adapter_options) - declared)
            if unknown:
                raise ConfigError(f"no installed adapter has the option(s) {unknown}; see `longllava-sdk plugins "
                                  "--adapter NAME` for each adapter's options")
        self._adapters: dict[tuple[str, str], Any] = {}

    def __getstate__(self) -> dict[str, Any]:  # adapters are rebuilt in DataLoader workers
        state = dict(self.__dict__)
        state["_adapters"] = {}
        return state

    def resolve_paths(self, source: MediaSource) -> list[Path]:
        paths = source.path if isinstance(source.path, tuple) else (source.path,)
        return [resolve_data_path(p, self.root) for p in paths]

    def adapter_name(self, source: MediaSource, paths: list[Path]) -> str:
        """The adapter for ``source``: the row's, else the first adapter of the key's kind that claims it.

        When none claims it, :func:`~longllava_sdk.registry.resolve_adapter` asks each
        adapter of the kind to read it and raises, adapter by adapter, why it cannot.
        """
        if source.adapter:
            return source.adapter
        kind = KIND_OF_KEY.get(source.key)
        found = claiming_adapter(paths[0], kind=kind)
        if found is None:
            target: Any = [str(p) for p in paths] if isinstance(source.path, tuple) else str(paths[0])
            found = type(resolve_adapter(target, kind=kind, options=source.option_dict))
        return found.name

    def budget(self, source: MediaSource, adapter: str, n_sources: int) -> int | None:
        """Images allowed for one source: row option, recipe adapter setting, share of the sample budget."""
        limits = []
        row_limit = source.option_dict.get("max_images")
        if isinstance(row_limit, int) and row_limit > 0:
            limits.append(row_limit)
        elif self.recipe is not None:
            settings = self.recipe.adapters.get(adapter)
            if settings is not None and settings.max_images is not None:
                limits.append(settings.max_images)
        if self.max_images is not None:
            limits.append(max(1, self.max_images // max(1, n_sources)))
        return min(limits) if limits else None

    def load(self, source: MediaSource, n_sources: int = 1, paths: list[Path] | None = None) -> Media:
        """Read one source into :class:`Media` (raises the path check's or the adapter's typed error).

        Every file the adapter opens (files of a folder, symlinks resolved) must lie inside the
        data root (:func:`~longllava_sdk.adapters.allowed_root`). With :attr:`isolation` the
        read runs in a worker process (the same loader, pickled) and its Media comes back.
        """
        if self.isolation is not None:
            paths = paths if paths is not None else self.resolve_paths(source)
            isolated = copy.copy(self)
            isolated.isolation = None
            return run_isolated(isolated.load, source, n_sources, paths, limits=self.isolation,
                                source=str(paths[0]))
        with allowed_root(self.root):
            return self._load(source, n_sources, paths)

    def _load(self, source: MediaSource, n_sources: int, paths: list[Path] | None) -> Media:
        paths = paths if paths is not None else self.resolve_paths(source)
        name = self.adapter_name(source, paths)
        options = self.recipe.adapter_options(name) if self.recipe is not None else {}
        declared = available_adapters()[name].options() if name in available_adapters() else {}
        options.update({k: v for k, v in self.adapter_options.items() if k in declared})
        options.update({k: v for k, v in source.option_dict.items() if k != "max_images"})
        cache_key = (name, json.dumps(options, sort_keys=True, default=str))
        adapter = self._adapters.get(cache_key)
        if adapter is None:
            adapter = resolve_adapter(paths[0], name, kind=KIND_OF_KEY.get(source.key), options=options)
            self._adapters[cache_key] = adapter
        target: Any = [str(p) for p in paths] if isinstance(source.path, tuple) else str(paths[0])
        media = adapter.load(target, max_images=self.budget(source, name, n_sources))
        if not isinstance(media, Media):
            raise InputError(paths[0], f"adapter {name!r} returned {type(media).__name__}, not Media")
        return media


# ------------------------------------------------------------------------------------------
# Encoding and the bounded cache
# ------------------------------------------------------------------------------------------


class SampleCache:
    """Encoded samples kept from validation, bounded by the number of images they hold.

    Oldest entries are evicted first; :meth:`take` removes an entry (each sample is used
    once per epoch, so memory shrinks as training reads them).
    """

    def __init__(self, max_images: int = 256) -> None:
        self.max_images = max(0, int(max_images))
        self._items: OrderedDict[str, EncodedSample] = OrderedDict()
        self._images = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def images(self) -> int:
        return self._images

    def put(self, key: str, sample: EncodedSample) -> None:
        cost = max(1, len(sample.images))
        if cost > self.max_images:
            return
        self.discard(key)
        while self._items and self._images + cost > self.max_images:
            _, old = self._items.popitem(last=False)
            self._images -= max(1, len(old.images))
        self._items[key] = sample
        self._images += cost

    def take(self, key: str) -> EncodedSample | None:
        sample = self._items.pop(key, None)
        if sample is not None:
            self._images -= max(1, len(sample.images))
        return sample

    def discard(self, key: str) -> None:
        self.take(key)


def _load_row_media(row: DataRow, loader: MediaLoader) -> tuple[list[Media], list[str]]:
    """Check every source's paths, then load the sources (no load when any path is bad)."""
    problems: list[str] = []
    resolved: list[list[Path]] = []
    for index, source in enumerate(row.sources):
        try:
            resolved.append(loader.resolve_paths(source))
        except InputError as exc:
            problems.append(f"{_source_label(row, index)}: {exc.problem}")
    if problems:
        return [], problems
    media: list[Media] = []
    for index, (source, paths) in enumerate(zip(row.sources, resolved)):
        try:
            media.append(loader.load(source, len(row.sources), paths))
        except (LongLLaVAError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            problems.append(f"unreadable source {_source_label(row, index)}: {type(exc).__name__}: {exc}")
    return media, problems


def _source_label(row: DataRow, index: int) -> str:
    source = row.sources[index]
    path = source.path if isinstance(source.path, str) else f"{source.path[0]} (+{len(source.path) - 1} files)"
    return f"{source.key} {path!r}" if len(row.sources) == 1 else f"{source.key} #{index} {path!r}"


def _messages_for(row: DataRow, media: Sequence[Media]) -> list[dict[str, Any]]:
    """Attach media to user turns by ``<image>`` markers (all to the first user turn if none)."""
    messages = [dict(turn) for turn in row.turns]
    markers = [m["content"].count(protocol.IMAGE_PLACEHOLDER) if m["role"] == "user" else 0 for m in messages]
    remaining = list(media)
    if sum(markers) == 0:
        for message in messages:
            if message["role"] == "user":
                message["media"] = remaining
                break
        return messages
    for message, count in zip(messages, markers):
        if count:
            message["media"], remaining = remaining[:count], remaining[count:]
    return messages


def _structural_problems(row: DataRow, head: TaskHead | None) -> list[str]:
    problems = list(row.problems)
    if row.problems and not row.turns:
        return problems
    if not row.turns:
        problems.append("empty conversation")
    elif not any(t["role"] == "assistant" and t["content"].strip() for t in row.turns):
        if not any("no assistant turn" in p for p in problems):
            problems.append("no assistant turn: the conversation has no non-empty gpt/assistant answer")
    if not any(t["role"] == "user" for t in row.turns) and row.turns:
        problems.append("no human/user turn")
    for t in row.turns:
        if t["role"] == "assistant" and protocol.IMAGE_PLACEHOLDER in t["content"]:
            problems.append("an assistant (gpt) turn contains an <image> marker; media belong to human turns")
            break
    markers = sum(t["content"].count(protocol.IMAGE_PLACEHOLDER) for t in row.turns if t["role"] == "user")
    if markers and markers != len(row.sources):
        problems.append(f"placeholder/media count mismatch: {markers} <image> marker(s) but "
                        f"{len(row.sources)} media source(s)")
    if head is not None and not head.generates:
        try:
            head.encode_targets(row.labels, final_answer(row))
        except ValueError as exc:  # the head's own words about its label format
            problems.append(str(exc))
    return problems


def final_answer(row: DataRow) -> str | None:
    """The row's last assistant answer (what a head's :meth:`~TaskHead.encode_targets` may read)."""
    answers = [t["content"] for t in row.turns if t["role"] == "assistant"]
    return answers[-1] if answers else None


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


def validate_rows(
    rows: Sequence[DataRow],
    processor: LongLLaVAProcessor,
    loader: MediaLoader,
    *,
    max_length: int | None,
    head: TaskHead | None = None,
    cache: SampleCache | None = None,
    num_workers: int = 0,
    raise_errors: bool = True,
    source: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Check every row; set ``row.length`` / ``row.num_images`` on the good ones.

    Args:
        rows: rows from :func:`read_rows` (possibly from several files).
        processor: tokenizes and counts ``tokens_per_image`` per image.
        loader: reads media (each source once; see the module docstring).
        max_length: context limit a sample must fit in on its own (``None``: no limit).
        head: the task head; each row's labels must fit its label format (``encode_targets``).
        cache: keeps encoded samples for the dataset's first access (bounded).
        num_workers: threads loading media in parallel (0: in this thread). Tokenizing
            always happens in the calling thread.
        raise_errors: raise :class:`DatasetError` listing every problem (else return them).
        source: the name the error is reported under (default: the first row's file).

    Returns:
        ``"<file> <where> (id ...): <problem>"`` lines (empty when all rows are valid).
    """
    problems: list[str] = []
    structural = {row.key: _structural_problems(row, head) for row in rows}
    seen_ids: dict[str, DataRow] = {}
    for row in rows:
        if row.id in seen_ids and not structural[row.key]:
            structural[row.key].append(f"duplicate id (also {seen_ids[row.id].where} of {seen_ids[row.id].file.name})")
        seen_ids.setdefault(row.id, row)
    per_row = dict(structural)
    loadable = [row for row in rows if not structural[row.key]]
    for row, (media, load_problems) in zip(loadable, _map_media(loadable, loader, num_workers)):
        per_row[row.key] = load_problems or _encode_check(row, media, processor, loader, max_length, cache)
    for row in rows:  # in file order
        problems.extend(f"{row.describe()}: {p}" for p in per_row[row.key])
    if problems and raise_errors:
        raise DatasetError(source or (rows[0].file if rows else "<no rows>"), problems)
    return problems


def _map_media(rows: Sequence[DataRow], loader: MediaLoader, num_workers: int
               ) -> Iterator[tuple[list[Media], list[str]]]:
    """Load each row's media in order; with workers, at most ``2 * num_workers`` rows ahead."""
    if num_workers <= 0:
        for row in rows:
            yield _load_row_media(row, loader)
        return
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="longllava-validate") as pool:
        pending: list[Any] = []
        iterator = iter(rows)
        for row in iterator:
            pending.append(pool.submit(_load_row_media, row, loader))
            if len(pending) >= 2 * num_workers:
                break
        while pending:
            future = pending.pop(0)
            next_row = next(iterator, None)
            if next_row is not None:
                pending.append(pool.submit(_load_row_media, next_row, loader))
            yield future.result()


def _encode_check(row: DataRow, media: list[Media], processor: LongLLaVAProcessor, loader: MediaLoader,
                  max_length: int | None, cache: SampleCache | None) -> list[str]:
    n_images = sum(len(m) for m in media)
    if loader.max_images is not None and n_images > loader.max_images:
        return [f"{n_images} images after sampling but max_images is {loader.max_images} "
                f"(use fewer sources or a smaller per-source max_images)"]
    try:
        with selected_experts(loader.experts):
            encoded = processor.encode_conversation(_messages_for(row, media))
    except ProtocolError as exc:
        return [f"placeholder/media count mismatch: {exc}"]
    except LongLLaVAError as exc:
        return [f"cannot encode: {exc}"]
    assert encoded is not None
    if not any(label != -100 for label in encoded.labels):
        return ["no assistant turn: no answer tokens to learn from"]
    if max_length is not None and len(encoded) > max_length:
        text_tokens = len(encoded) - n_images * processor.tokens_per_image
        return [f"too long for the context even alone: {len(encoded)} tokens ({n_images} images x "
                f"{processor.tokens_per_image} + {text_tokens} text) > max_length {max_length}"]
    row.length, row.num_images = len(encoded), n_images
    if cache is not None:
        cache.put(row.key, encoded)
    return []


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------


class TrainingDataset(Dataset):
    """Validated rows -> :class:`TrainingSample` items, media loaded lazily through adapters.

    Args:
        rows: validated rows (``length`` set by :func:`validate_rows`).
        processor: the model's processor.
        loader: reads media with the recipe's adapter options and per-sample ``max_images``.
        max_length: a sample longer than this raises (media are never cut).
        head: the task head; it turns each row into ``head_labels`` (``None`` for ``generate``).
        cache: encoded samples kept by validation (taken on first access).

    Items: ``TrainingSample(input_ids, labels, images, head_labels, sample_id)``; use
    :class:`~longllava_sdk.training.collator.TrainingCollator` to batch them.
    """

    def __init__(
        self,
        rows: Sequence[DataRow],
        processor: LongLLaVAProcessor,
        loader: MediaLoader,
        *,
        max_length: int | None = None,
        head: TaskHead | None = None,
        cache: SampleCache | None = None,
    ) -> None:
        self.rows = list(rows)
        self.processor = processor
        self.loader = loader
        self.max_length = max_length
        self.head = head
        self.cache = cache

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        """Token length of each sample (``tokens_per_image`` per image), from validation."""
        missing = [row.describe() for row in self.rows if row.length is None]
        if missing:
            raise DatasetError(self.rows[0].file, [f"{m}: not validated (no length)" for m in missing])
        return [int(row.length) for row in self.rows]  # type: ignore[arg-type]

    @property
    def ids(self) -> list[str]:
        return [row.id for row in self.rows]

    def encode(self, index: int) -> EncodedSample:
        """Load and tokenize row ``index`` (no cache)."""
        row = self.rows[index]
        media, problems = _load_row_media(row, self.loader)
        if problems:
            raise DatasetError(row.file, [f"{row.describe()}: {p}" for p in problems])
        try:
            with selected_experts(self.loader.experts):
                encoded = self.processor.encode_conversation(_messages_for(row, media), max_length=self.max_length)
        except ProtocolError as exc:
            raise DatasetError(row.file, [f"{row.describe()}: {exc}"]) from exc
        assert encoded is not None
        return encoded

    def __getitem__(self, index: int) -> TrainingSample:
        row = self.rows[index]
        encoded = self.cache.take(row.key) if self.cache is not None else None
        if encoded is None:
            encoded = self.encode(index)
        return TrainingSample(
            input_ids=list(encoded.input_ids),
            labels=list(encoded.labels),
            images=list(encoded.images),
            head_labels=(None if self.head is None or self.head.generates
                         else self.head.encode_targets(row.labels, final_answer(row))),
            sample_id=row.id,
        )

    def subset(self, indices: Iterable[int]) -> "TrainingDataset":
        """A dataset over some of the rows (same processor, loader and cache)."""
        return TrainingDataset([self.rows[i] for i in indices], self.processor, self.loader,
                               max_length=self.max_length, head=self.head, cache=self.cache)


# ------------------------------------------------------------------------------------------
# Splits and the one-call entry point
# ------------------------------------------------------------------------------------------


def split_rows(rows: Sequence[DataRow], eval_fraction: float = 0.0, seed: int = 0
               ) -> tuple[list[DataRow], list[DataRow]]:
    """(train, eval): by each row's ``split`` when any row has one, else a seeded ``eval_fraction``.

    With a fraction, at least one row is held out (when there are two or more rows) and the
    choice depends only on the row ids and ``seed``.
    """
    if any(row.split for row in rows):
        return ([r for r in rows if (r.split or "train") not in EVAL_SPLITS],
                [r for r in rows if (r.split or "train") in EVAL_SPLITS])
    if not eval_fraction or len(rows) < 2:
        return list(rows), []
    order = sorted(range(len(rows)), key=lambda i: rows[i].id)
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(eval_fraction * len(rows))))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


@dataclass
class PreparedData:
    """What :func:`prepare_datasets` returns.

    Attributes:
        train: the training dataset.
        eval: the held-out dataset (``None`` when there is none).
        head: the task head the targets were built for (``None``: answer text only).
        skipped: problems of rows left out (only with ``skip_invalid=True``).
        data_path: the training data file.
        root: the data root.
    """

    train: TrainingDataset
    eval: TrainingDataset | None
    head: TaskHead | None
    skipped: list[str]
    data_path: Path
    root: Path


def prepare_datasets(
    processor: LongLLaVAProcessor,
    recipe: Recipe | None = None,
    *,
    data_path: str | os.PathLike[str] | None = None,
    eval_path: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    max_length: int | None = None,
    max_images: int | None = None,
    eval_fraction: float | None = None,
    seed: int | None = None,
    head: TaskHead | None = None,
    adapter_options: dict[str, Any] | None = None,
    skip_invalid: bool = False,
    cache_images: int = 256,
    num_workers: int = 0,
    isolate_decoding: bool | DecodeLimits | None = False,
) -> PreparedData:
    """Read, split and validate the data of a run; return the train / eval datasets.

    Every argument left ``None`` comes from ``recipe`` (``data.path``, ``data.root``,
    ``data.eval_path``, ``data.eval_fraction``, ``training.max_length``, ``max_images``,
    ``training.seed``). ``data_path`` given explicitly uses its own folder as the root (not
    the recipe's), unless ``data_root`` is given. ``head`` (the run's task head) checks every
    row's labels and builds its targets; ``None`` trains the answer text.
    ``isolate_decoding``: as for :class:`MediaLoader` (a read that runs past its limits is a
    problem of its row, listed with the others).

    Raises:
        DatasetError: listing every bad row of both splits (unless ``skip_invalid``, which
            leaves them out and lists them in ``PreparedData.skipped``).
        ConfigError: no data path at all.
    """
    data_settings = getattr(recipe, "data", None)
    explicit = data_path is not None
    path = Path(data_path) if explicit else getattr(data_settings, "path", None)
    if path is None:
        raise ConfigError("no training data: pass data_path or use a recipe with data.path")
    path = Path(path).resolve()
    root = Path(data_root) if data_root is not None else (
        None if explicit else getattr(data_settings, "root", None)) or path.parent
    if eval_path is None and not explicit:
        eval_path = getattr(data_settings, "eval_path", None)
    fraction = eval_fraction if eval_fraction is not None else getattr(data_settings, "eval_fraction", 0.0)
    training = getattr(recipe, "training", None)
    max_length = max_length if max_length is not None else getattr(training, "max_length", None)
    seed = seed if seed is not None else getattr(training, "seed", 0)
    head_settings = getattr(recipe, "head", None)
    # by the head's problem type, never its name: a plugin's text head needs no targets either
    if head is None and head_settings is not None and get_head_class(head_settings.type).problem_type != "generate":
        raise ConfigError(f"recipe {recipe.name!r} trains the {head_settings.type} head: pass head=<the run's head> "
                          "so every row's labels are checked and turned into its targets")

    rows = read_rows(path, recipe=recipe)
    if eval_path is not None:
        train_rows, eval_rows = rows, read_rows(eval_path, recipe=recipe)
    else:
        train_rows, eval_rows = split_rows(rows, fraction or 0.0, seed)
    loader = MediaLoader(root, recipe, max_images, adapter_options, isolate_decoding=isolate_decoding)
    cache = SampleCache(cache_images)
    problems = validate_rows(train_rows + eval_rows, processor, loader, max_length=max_length, head=head,
                             cache=cache, num_workers=num_workers, raise_errors=not skip_invalid, source=path)
    if skip_invalid:
        train_rows = [r for r in train_rows if r.length is not None]
        eval_rows = [r for r in eval_rows if r.length is not None]
        if not train_rows:
            raise DatasetError(path, ["no valid training rows left", *problems])

    def make(selected: list[DataRow]) -> TrainingDataset:
        return TrainingDataset(selected, processor, loader, max_length=max_length, head=head, cache=cache)

    return PreparedData(train=make(train_rows), eval=make(eval_rows) if eval_rows else None, head=head,
                        skipped=problems, data_path=path, root=Path(os.path.realpath(root)))


def as_tensor_head_labels(values: Sequence[Any]) -> torch.Tensor | None:
    """Stack per-sample head targets (what the head's ``encode_targets`` returned).

    ``torch.tensor`` picks the dtype: ``(B,)`` long for class indices, ``(B, C)`` float for
    multi-hot lists, ``(B,)`` float for scores; ``None`` when no sample has targets.
    """
    if not values or all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ProtocolError("a batch mixes samples with and without head labels")
    return torch.tensor(values)
