"""``training_loss.png``: the loss curve of a run, drawn with Pillow (no plotting library needed).

Like LLaMA-Factory's ``plot_loss``: the training loss of every logged step (thin line) and its
exponential moving average (thick line), plus the evaluation loss where evaluations ran (dots).
Pillow is already a dependency of the SDK, so every run folder gets its curve whatever extras
are installed; the figure is deliberately plain (axes, ticks, a legend).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["LOSS_PLOT_NAME", "plot_loss", "smooth"]

LOSS_PLOT_NAME = "training_loss.png"
_SIZE = (960, 560)
_MARGIN = (90, 40, 30, 70)  # left, top, right, bottom
_TRAIN, _SMOOTH, _EVAL, _AXIS, _GRID = (150, 180, 230), (31, 90, 200), (220, 80, 30), (40, 40, 40), (225, 225, 225)


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Exponential moving average (TensorBoard's, bias-corrected); the weight grows with the
    number of points as in LLaMA-Factory (``1.8 * (1 / (1 + exp(-0.05 n)) - 0.5)``)."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], 0.0
    for index, value in enumerate(values, 1):
        last = last * weight + (1 - weight) * value
        out.append(last / (1 - weight ** index) if weight else value)
    return out


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def plot_loss(records: Sequence[dict[str, Any]], output: str | os.PathLike[str], *, title: str = "training loss"
              ) -> Path | None:
    """Draw the ``loss`` (and ``eval_loss``) of ``trainer_log.jsonl`` records into ``output`` (PNG).

    Returns the path, or ``None`` when no record has a finite training loss (nothing to draw).
    """
    train = [(r["step"], float(r["loss"])) for r in records
             if isinstance(r.get("step"), (int, float)) and isinstance(r.get("loss"), (int, float))
             and math.isfinite(r["loss"])]
    evals = [(r["step"], float(r["eval_loss"])) for r in records
             if isinstance(r.get("step"), (int, float)) and isinstance(r.get("eval_loss"), (int, float))
             and math.isfinite(r["eval_loss"])]
    if not train:
        return None
    smoothed = list(zip([s for s, _ in train], smooth([v for _, v in train])))
    steps = [s for s, _ in train + evals]
    values = [v for _, v in train + evals]
    x_low, x_high = min(steps), max(steps)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = min(values), max(values)
    pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 1.0
    y_low, y_high = y_low - pad, y_high + pad

    image = Image.new("RGB", _SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = _MARGIN[0], _MARGIN[1], _SIZE[0] - _MARGIN[2], _SIZE[1] - _MARGIN[3]

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - x_low) / (x_high - x_low) * (right - left),
                bottom - (value - y_low) / (y_high - y_low) * (bottom - top))

    for tick in _ticks(y_low, y_high):
        _, y = xy(x_low, tick)
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((left - 8, y), _label(tick), fill=_AXIS, font=font, anchor="rm")
    for tick in _ticks(x_low, x_high):
        x, _ = xy(tick, y_low)
        draw.line([(x, bottom), (x, bottom + 5)], fill=_AXIS)
        draw.text((x, bottom + 8), _label(tick), fill=_AXIS, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=_AXIS)
    if len(train) > 1:
        draw.line([xy(s, v) for s, v in train], fill=_TRAIN, width=1)
        draw.line([xy(s, v) for s, v in smoothed], fill=_SMOOTH, width=3)
    else:
        x, y = xy(*train[0])
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=_SMOOTH)
    for step, value in evals:
        x, y = xy(step, value)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=_EVAL)
    draw.text(((left + right) / 2, 12), title, fill=_AXIS, font=font, anchor="mt")
    draw.text(((left + right) / 2, _SIZE[1] - 20), "step", fill=_AXIS, font=font, anchor="mm")
    legend = [("loss", _TRAIN), ("smoothed", _SMOOTH)] + ([("eval loss", _EVAL)] if evals else [])
    x = right - 10
    for text, colour in reversed(legend):
        width = draw.textlength(text, font=font)
        x -= width
        draw.text((x, top + 10), text, fill=colour, font=font)
        x -= 18
    output = Path(output)
    image.save(output, format="PNG")
    return output
