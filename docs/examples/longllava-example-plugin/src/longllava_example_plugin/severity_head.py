"""A regression head with its own label format: a severity score read from the answer text.

Rows say how severe a finding is, either as a number in ``labels`` (``"2.5"``) or in the
answer (``"severity 3 of 4"``); the head learns that number from the pooled hidden states.
Nothing in the SDK knows this format: the head parses it (:meth:`encode_targets`), scores
itself (:meth:`metrics`) and describes its predictions (:meth:`describe`).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch.nn import functional as F

from longllava_sdk.heads import TaskHead

_NUMBER = re.compile(r"severity\D{0,12}?(-?\d+(?:\.\d+)?)", re.IGNORECASE)


class SeverityHead(TaskHead):
    """Predicts one score in ``[0, max_score]`` (mean-squared error on the pooled hidden states).

    Args:
        hidden_size: width ``H`` of the backbone's hidden states.
        labels: one name, the score's (e.g. ``["severity"]``).
        max_score: the top of the scale; targets outside ``[0, max_score]`` are invalid rows.
    """

    name = "example_severity"
    problem_type = "regression"

    def __init__(self, hidden_size: int, labels: list[str], max_score: float = 4.0) -> None:
        super().__init__(hidden_size, labels)
        self.max_score = float(max_score)
        self.regressor = torch.nn.Linear(hidden_size, 1)

    @classmethod
    def check_labels(cls, labels: list[str]) -> list[str]:
        return [] if len(labels) == 1 else [f"a regression head names exactly one score, got {labels}"]

    def encode_targets(self, labels: list[str] | None, answer: str | None) -> float:
        """``labels: ["2.5"]`` or an answer such as ``"severity 3 of 4"`` -> ``2.5`` / ``3.0``."""
        text = labels[0] if labels else None
        if text is None and answer:
            match = _NUMBER.search(answer)
            text = match.group(1) if match else None
        if text is None:
            raise ValueError(f"no severity score: give labels: [<number>] or an answer like 'severity 2 of "
                             f"{self.max_score:g}'")
        try:
            score = float(text)
        except ValueError:
            raise ValueError(f"severity {text!r} is not a number") from None
        if not 0.0 <= score <= self.max_score:
            raise ValueError(f"severity {score:g} is outside 0..{self.max_score:g}")
        return score

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)``, ``(B, L)`` -> ``(B, 1)`` scores."""
        pooled = self.pool(hidden_states.float(), attention_mask)
        return self.regressor(pooled.to(self.regressor.weight.dtype)).float()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error against ``(B,)`` scores."""
        return F.mse_loss(logits[:, 0], targets.float().to(logits.device))

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, 1)`` -> ``(B,)`` scores clamped to the scale."""
        return logits[:, 0].clamp(0.0, self.max_score)

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Mean absolute and root-mean-squared error."""
        errors = predictions.float().flatten() - targets.float().flatten()
        if errors.numel() == 0:
            return {"mae": 0.0, "rmse": 0.0}
        return {"mae": errors.abs().mean().item(), "rmse": errors.pow(2).mean().sqrt().item()}

    def describe(self, logits: torch.Tensor) -> dict[str, Any]:
        """``{"severity": score, "scale": max_score}`` (the score named by the head's one label)."""
        return {self.labels[0]: float(self.predict(logits.reshape(1, -1))[0]), "scale": self.max_score}

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "max_score": self.max_score}
