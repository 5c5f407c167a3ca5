"""Plain-text tables of evaluation results (what the CLI prints)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..errors import option_hint

__all__ = ["grid_table", "metrics_table", "percent", "random_weights_note"]


def percent(value: float | None) -> str:
    """``0.873`` -> ``"87.3"``; ``None`` -> ``"-"``."""
    return "-" if value is None else f"{100.0 * value:.1f}"


def _render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width)
                               in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def grid_table(cells: Sequence[dict[str, Any]], *, row_key: str, col_key: str, metric: str, corner: str,
               row_margin: Sequence[dict[str, Any]] = (), col_margin: Sequence[dict[str, Any]] = (),
               overall: float | None = None, row_label: Callable[[Any], str] = str,
               col_label: Callable[[Any], str] = str) -> str:
    """A ``row_key`` x ``col_key`` table of ``metric`` (as percentages).

    Args:
        cells: one dict per (row, column) group with both keys and ``metric``.
        corner: the top-left header (e.g. ``"depth \\\\ images"``).
        row_margin: groups by ``row_key`` alone (an ``all`` column); col_margin: by ``col_key``
            alone (an ``all`` row); overall: the bottom-right corner.
    """
    rows = list(dict.fromkeys(c[row_key] for c in cells))
    cols = list(dict.fromkeys(c[col_key] for c in cells))
    value = {(c[row_key], c[col_key]): c.get(metric) for c in cells}
    by_row = {c[row_key]: c.get(metric) for c in row_margin}
    by_col = {c[col_key]: c.get(metric) for c in col_margin}
    header = [corner] + [col_label(c) for c in cols] + (["all"] if by_row else [])
    table = [header]
    for r in rows:
        line = [row_label(r)] + [percent(value.get((r, c))) for c in cols]
        if by_row:
            line.append(percent(by_row.get(r)))
        table.append(line)
    if by_col:
        line = ["all"] + [percent(by_col.get(c)) for c in cols]
        if by_row:
            line.append(percent(overall))
        table.append(line)
    return _render(table)


def metrics_table(metrics: dict[str, float], labels: Sequence[str] = (),
                  chance: dict[str, dict[str, float]] | None = None) -> str:
    """Scalar metrics one per line, then per-label scores (``<score>/<label>`` keys) as a label x
    score table, then a confusion matrix (``confusion/<gold>/<pred>`` keys) when present.

    ``chance`` (:func:`longllava_sdk.chance.chance_baselines`) adds two columns next to each
    scalar metric: the score of always giving the most common answer, and of guessing from
    the answer distribution (``-`` for metrics without a baseline, such as the loss).
    """
    scalars = {k: v for k, v in metrics.items() if "/" not in k}
    if chance:
        rows = [["metric", "value", "chance: majority", "chance: random"]]
        for key, value in scalars.items():
            base = chance.get(key) or {}
            rows.append([key, f"{value:.4g}"] + [f"{base[b]:.4g}" if b in base else "-"
                                                 for b in ("majority", "random")])
        lines = _render(rows).splitlines()
    else:
        lines = [f"{key:<22} {value:.4g}" for key, value in scalars.items()]
    names = list(labels)
    per_label: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        name, _, label = key.partition("/")
        if label and name != "confusion":
            per_label.setdefault(name, {})[label] = value
            if label not in names:
                names.append(label)
    if per_label:
        scores = list(per_label)
        table = [["label"] + scores]
        for label in names:
            if any(label in per_label[s] for s in scores):
                table.append([label] + [f"{per_label[s][label]:.3f}" if label in per_label[s] else "-" for s in scores])
        lines += ["", _render(table)]
    if any(key.startswith("confusion/") for key in metrics):
        matrix_labels = list(labels) or sorted({k.split("/")[1] for k in metrics if k.startswith("confusion/")})
        table = [["gold \\ predicted"] + matrix_labels]
        for gold in matrix_labels:
            table.append([gold] + [str(int(metrics.get(f"confusion/{gold}/{pred}", 0))) for pred in matrix_labels])
        lines += ["", "confusion matrix (rows: gold label, columns: predicted label)", _render(table)]
    return "\n".join(lines)


def random_weights_note(random_init: str | None, trained_steps: int | None = None, trained_rows: int | None = None
                        ) -> str | None:
    """The line reports print for a model whose weights started random (``None`` for a real model).

    ``random_init`` is what the model folder records (``"tiny preset, seed 0"``,
    :func:`longllava_sdk.model_folders.random_init_of`).
    """
    if not random_init:
        return None
    if trained_steps:
        rows = f" on {trained_rows} rows" if trained_rows else ""
        how = f"started from random weights ({random_init}) and trained {trained_steps} steps{rows}"
    else:
        how = f"holds random weights ({random_init}), never trained"
    return (f"note: this model {how}: a demo model, expected to score near the chance baseline; "
            f"fine-tune a pretrained model ({option_hint('model', 'DIR')}) for meaningful scores")
