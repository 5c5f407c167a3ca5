"""The evaluation loop shared by every mode: plan -> skip what is done -> predict -> log -> report.

A mode (needle-in-a-haystack, VNBench-style, a dataset) turns its arguments into a list of
:class:`CaseSpec` -- an id, the groups the item is reported under, JSON facts, and a
``build`` callable that materialises the item's images only when it is scored. The loop
(:func:`run_items`) skips ids already in the run folder's ``items.jsonl``, builds one item at
a time (so memory holds one item's images), predicts, scores it through the head and appends
its record. :func:`summarise` then scores all records, overall and per group, through the
same head (:func:`~.predict.score`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from ..heads import TaskHead
from .predict import EvalCase, Predictor, item_score, score
from .store import RunStore, identity_hash

__all__ = ["CaseSpec", "EvalReport", "run_items", "summarise", "confusion_matrix", "default_output_dir",
           "DEFAULT_OUTPUT_ROOT"]

#: Default parent of evaluation run folders (relative to the working directory).
DEFAULT_OUTPUT_ROOT = "eval-runs"


@dataclass(frozen=True)
class CaseSpec:
    """One planned item (no images yet).

    Attributes:
        id: unique within the run; what resume matches on.
        group: the values the item is reported under (``{"num_images": 64, "depth": 0.5}``).
        info: JSON facts stored with the item (needle positions, the question, the options...).
        build: returns the materialised :class:`EvalCase` (decodes / renders its images).
    """

    id: str
    group: dict[str, Any]
    info: dict[str, Any]
    build: Callable[[], EvalCase]


@dataclass
class EvalReport:
    """What an evaluation produced (also written to ``report.json``).

    Attributes:
        mode: ``niah``, ``vnbench`` or ``data``.
        model: the model folder.
        head: the name of the head that scored the items.
        output_dir: the run folder.
        metrics: the head's metrics over every item.
        groups: per grouping name (``"num_images x depth"``...), one entry per group value:
            the group's values, ``items`` and the head's metrics on its items.
        records: per-item records in plan order (id, group, reference, prediction, target, score...).
        scored: items predicted by this call; resumed: items taken from an earlier run.
        report_path: ``report.json``; heatmap_path: the heatmap PNG (niah).
        table: the printed summary.
        extra: mode-specific facts (chance level, haystack, confusion matrix...).
    """

    mode: str
    model: str
    head: str
    output_dir: Path
    metrics: dict[str, float]
    groups: dict[str, list[dict[str, Any]]]
    records: list[dict[str, Any]]
    scored: int
    resumed: int
    report_path: Path
    heatmap_path: Path | None = None
    table: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.model, "head": self.head, "metrics": self.metrics,
                "groups": self.groups, **self.extra, "items": self.records,
                "heatmap": str(self.heatmap_path) if self.heatmap_path else None}


def default_output_dir(mode: str, model: str | os.PathLike[str], identity: dict[str, Any]) -> Path:
    """``eval-runs/<mode>-<model folder name>-<hash of the identity>``: same settings, same folder."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).resolve().name) or "model"
    return Path(DEFAULT_OUTPUT_ROOT) / f"{mode}-{name}-{identity_hash(identity)}"


def run_items(specs: Sequence[CaseSpec], predictor: Predictor, store: RunStore, *, description: str,
              progress: bool = True) -> tuple[list[dict[str, Any]], int]:
    """Score every spec not yet in ``store``; returns (records in plan order, items scored now).

    Each record is appended to ``items.jsonl`` as soon as its item is scored, so an
    interrupted call loses at most the item in progress.
    """
    ids = [spec.id for spec in specs]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise AssertionError(f"duplicate item ids in a plan: {duplicates[:5]}")
    done = store.completed()
    todo = [spec for spec in specs if spec.id not in done]
    fresh: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(specs), initial=len(specs) - len(todo), desc=description, unit="item",
              disable=not progress, dynamic_ncols=True, leave=False) as bar:
        for spec in todo:
            started = time.perf_counter()
            case = spec.build()
            result = predictor.predict(case)
            record = {
                "id": spec.id, "group": spec.group, **spec.info,
                "reference": case.reference, "prediction": result.prediction, "target": result.target,
                "score": item_score(predictor.head, result.prediction, result.target),
                "seconds": round(time.perf_counter() - started, 3), **result.details,
            }
            del case  # the item's images: one item in memory at a time
            store.append(record)
            fresh[spec.id] = record
            bar.update(1)
    records = [fresh.get(spec.id) or done[spec.id] for spec in specs]
    return records, len(todo)


def _group_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def summarise(head: TaskHead, records: Sequence[dict[str, Any]], groupings: dict[str, Sequence[str]]
              ) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
    """Overall metrics and per-group metrics of ``records``, all through ``head.metrics``.

    Args:
        groupings: name -> the group keys it splits by, e.g. ``{"num_images x depth":
            ("num_images", "depth")}``; groups appear in the order their first item has.
    """
    overall = score(head, [r["prediction"] for r in records], [r["target"] for r in records])
    out: dict[str, list[dict[str, Any]]] = {}
    for name, keys in groupings.items():
        buckets: dict[tuple, list[dict[str, Any]]] = {}
        for record in records:
            key = tuple(_group_value(record["group"].get(k)) for k in keys)
            buckets.setdefault(key, []).append(record)
        rows = []
        for key, members in buckets.items():
            metrics = score(head, [r["prediction"] for r in members], [r["target"] for r in members])
            rows.append({**dict(zip(keys, key)), "items": len(members), **metrics})
        out[name] = rows
    return overall, out


def confusion_matrix(metrics: dict[str, float], labels: Sequence[str]) -> dict[str, Any] | None:
    """The ``confusion/<gold>/<pred>`` counts of a head's metrics as ``{"labels", "matrix"}``
    (``matrix[i][j]``: gold ``labels[i]`` predicted as ``labels[j]``); ``None`` without such keys.

    The labels come from the head, so a label containing ``/`` is still read correctly.
    """
    if not any(key.startswith("confusion/") for key in metrics):
        return None
    names = list(labels)
    matrix = [[int(metrics.get(f"confusion/{gold}/{pred}", 0)) for pred in names] for gold in names]
    return {"labels": names, "matrix": matrix}
