"""Chance baselines: what a predictor that never looks at the input scores on the same targets.

A metric means little without the score of guessing. For every scalar metric of a head the
SDK reports two input-blind predictors, scored by the head's own ``metrics`` on the very
targets the model was scored on (so the baseline holds for any head, a plugin's included,
and for any label distribution):

* ``majority``: always the most common target (the majority class for ``classify``, the
  most common label set for ``multilabel``, the most common answer for ``generate``);
* ``random``: targets drawn from the evaluation set's own target distribution (the targets,
  shuffled), averaged over several shuffles with a fixed seed. For ``k`` balanced classes its
  accuracy is ``1/k``; for unbalanced ones ``sum(p_i^2)``.

A model scoring at these values has learnt nothing the label distribution does not give away.
Per-label scores (``f1/<label>``) and counts (``confusion/...``) get no baseline.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Callable, Sequence

__all__ = ["chance_baselines", "BASELINES"]

#: The two input-blind predictors, in the order reports show them.
BASELINES: tuple[str, ...] = ("majority", "random")
#: Work bound: shuffles x targets scored in all (at least 5 shuffles, at most 100).
_SCORED_ITEMS = 20_000


def _key(target: Any) -> str:
    return json.dumps(target, sort_keys=True, default=str)


def chance_baselines(score: Callable[[list[Any], list[Any]], dict[str, float]], targets: Sequence[Any], *,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {"majority": x, "random": y}}`` for each scalar metric ``score`` returns.

    Args:
        score: the head's metrics of ``(predictions, targets)``, both lists of JSON values
            (e.g. :func:`longllava_sdk.evaluation.predict.score` bound to a head).
        targets: the targets the model was scored on (class indices, 0/1 rows, answer texts).
        seed: seed of the shuffles (the result is deterministic).
    """
    targets = list(targets)
    if not targets:
        return {}
    counts = Counter(_key(t) for t in targets)
    first: dict[str, Any] = {}
    for target in targets:
        first.setdefault(_key(target), target)
    most_common, best = targets[0], 0
    for key, target in first.items():  # ties: the target seen first
        if counts[key] > best:
            most_common, best = target, counts[key]
    majority = score([most_common] * len(targets), targets)
    draws = max(5, min(100, _SCORED_ITEMS // len(targets)))
    rng = random.Random(seed)
    sums: dict[str, float] = {}
    for _ in range(draws):
        guesses = list(targets)
        rng.shuffle(guesses)
        for key, value in score(guesses, targets).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    return {key: {"majority": float(value), "random": sums.get(key, 0.0) / draws}
            for key, value in majority.items() if "/" not in key}
