"""The vision -> language projector: a 2-layer MLP (LLaVA-1.5's ``mlp2x_gelu``)."""

from __future__ import annotations

import torch
from torch import nn


class MultiModalProjector(nn.Module):
    """``Linear(vision_hidden, text_hidden) -> GELU -> Linear(text_hidden, text_hidden)``.

    Maps pooled CLIP features ``(N, T, vision_hidden)`` to LLM embeddings ``(N, T, text_hidden)``.
    The official checkpoint stores these as ``model.mm_projector.0`` and ``.2``.
    """

    def __init__(self, vision_hidden_size: int, text_hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size, bias=True)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))
