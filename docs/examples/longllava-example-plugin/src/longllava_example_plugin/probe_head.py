"""A linear-probe task head: masked mean of the hidden states, dropout, one linear layer."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from longllava_sdk.heads import TaskHead


class LinearProbeHead(TaskHead):
    """Single-label classifier on the pooled hidden states.

    Args:
        hidden_size: width ``H`` of the backbone's hidden states.
        labels: class names, in logit order.
        dropout: dropout probability before the linear layer.
    """

    name = "example_linear_probe"
    problem_type = "single_label"

    def __init__(self, hidden_size: int, labels: list[str], dropout: float = 0.1) -> None:
        super().__init__(hidden_size, labels)
        self.dropout_p = float(dropout)
        self.dropout = torch.nn.Dropout(self.dropout_p)
        self.classifier = torch.nn.Linear(hidden_size, self.num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)``, ``(B, L)`` -> logits ``(B, num_labels)``."""
        pooled = self.pool(hidden_states, attention_mask)
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices ``(B,)``."""
        return F.cross_entropy(logits.float(), targets.long())

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """``accuracy`` and ``macro_f1`` (F1 averaged over the labels present in either tensor)."""
        predictions, targets = predictions.long().flatten(), targets.long().flatten()
        if predictions.numel() == 0:
            return {"accuracy": 0.0, "macro_f1": 0.0}
        f1s = []
        for label in torch.unique(torch.cat([predictions, targets])):
            tp = ((predictions == label) & (targets == label)).sum().item()
            fp = ((predictions == label) & (targets != label)).sum().item()
            fn = ((predictions != label) & (targets == label)).sum().item()
            f1s.append(2 * tp / (2 * tp + fp + fn))
        return {"accuracy": (predictions == targets).float().mean().item(), "macro_f1": sum(f1s) / len(f1s)}

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "dropout": self.dropout_p}
