"""Task heads: small modules that turn the language model's hidden states into task outputs.

A head is registered through the ``longllava_register_heads`` hook (see
:mod:`longllava_sdk.hookspecs`), built-ins exactly like third-party ones, and looked up by its
``name`` with :func:`available_heads`. The trainer runs the backbone, then calls::

    logits = head(hidden_states, attention_mask)   # (B, L, H), (B, L) -> (B, num_labels)
    loss = head.loss(logits, targets)
    scores = head.metrics(head.predict(logits), targets)

and saves ``head.config_dict()`` next to the weights so that
``available_heads()[cfg["name"]].from_config(cfg)`` rebuilds it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch

from .errors import ConfigError

ProblemType = Literal["generate", "single_label", "multi_label"]
PROBLEM_TYPES: tuple[str, ...] = ("generate", "single_label", "multi_label")


class TaskHead(torch.nn.Module, ABC):
    """Base class of task heads.

    Subclasses set the class attributes ``name`` (unique, used in recipes and saved configs)
    and ``problem_type`` (``generate``, ``single_label`` or ``multi_label``), build their
    layers in ``__init__`` (after ``super().__init__(hidden_size, labels)``) and implement
    :meth:`forward`, :meth:`loss` and :meth:`metrics`. A subclass whose ``__init__`` takes
    more arguments adds them to :meth:`config_dict`.

    Args:
        hidden_size: width ``H`` of the hidden states the head receives.
        labels: class names, in logit order (may be empty only for ``generate`` heads).
    """

    name: ClassVar[str]
    problem_type: ClassVar[ProblemType]

    def __init__(self, hidden_size: int, labels: list[str]) -> None:
        super().__init__()
        kind = getattr(type(self), "problem_type", None)
        if kind not in PROBLEM_TYPES:
            raise ConfigError(f"head {type(self).__qualname__}: problem_type must be one of "
                              f"{PROBLEM_TYPES}, got {kind!r}")
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ConfigError(f"head {self._label()}: hidden_size must be a positive int, got {hidden_size!r}")
        labels = [str(label) for label in labels]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ConfigError(f"head {self._label()}: duplicate labels {duplicates}")
        if not labels and kind != "generate":
            raise ConfigError(f"head {self._label()}: a {kind} head needs at least one label")
        self.hidden_size = hidden_size
        self.labels = labels

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @abstractmethod
    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, L, H)`` and attention mask ``(B, L)`` -> logits ``(B, num_labels)``."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of ``logits`` ``(B, num_labels)`` against ``targets``.

        ``targets`` is ``(B,)`` class indices for ``single_label``, ``(B, num_labels)`` 0/1
        for ``multi_label``.
        """

    @abstractmethod
    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Evaluation scores (e.g. ``accuracy``) of :meth:`predict` outputs against ``targets``."""

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_labels)`` -> class indices ``(B,)`` or 0/1 ``(B, num_labels)``."""
        if self.problem_type == "multi_label":
            return (logits > 0).long()  # sigmoid(logit) > 0.5
        return logits.argmax(dim=-1)

    @staticmethod
    def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of ``hidden_states`` ``(B, L, H)`` over positions where ``attention_mask`` ``(B, L)``
        is non-zero -> ``(B, H)``; a row with no such position pools to zeros."""
        if hidden_states.dim() != 3 or attention_mask.shape != hidden_states.shape[:2]:
            raise ValueError(f"pool expects hidden_states (B, L, H) and attention_mask (B, L), got "
                             f"{tuple(hidden_states.shape)} and {tuple(attention_mask.shape)}")
        mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def config_dict(self) -> dict[str, Any]:
        """JSON-ready description to save next to the weights; :meth:`from_config` reverses it."""
        return {"name": self.name, "problem_type": self.problem_type,
                "hidden_size": self.hidden_size, "labels": list(self.labels)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TaskHead:
        """Rebuild a head from :meth:`config_dict` output (``name`` must match this class)."""
        kwargs = dict(config)
        name, kind = kwargs.pop("name", cls.name), kwargs.pop("problem_type", cls.problem_type)
        if name != cls.name or kind != cls.problem_type:
            raise ConfigError(f"config for head {name!r} ({kind}) cannot build head {cls.name!r} "
                              f"({cls.problem_type})")
        return cls(**kwargs)

    def _label(self) -> str:
        return getattr(type(self), "name", type(self).__qualname__)


def available_heads() -> dict[str, type[TaskHead]]:
    """All task heads registered through the plugin manager, by name."""
    from .plugin_manager import get_plugin_manager

    return get_plugin_manager().registered_classes("longllava_register_heads", TaskHead, "head")
