"""Task heads: small modules that turn the language model's hidden states into task outputs.

A head is registered through the ``longllava_register_heads`` hook (see
:mod:`longllava_sdk.hookspecs`), built-ins exactly like third-party ones, and looked up by its
``name`` (:func:`longllava_sdk.registry.get_head_class`). Everything the engine does
with a head goes through this contract, so a third-party head is exactly as capable as a
built-in one:

* a recipe names it (``head: {type: <name>, labels: [...]}``); :meth:`TaskHead.check_labels`
  validates the label list;
* the data path turns every row into targets with :meth:`TaskHead.encode_targets` (the
  head owns its label format; a bad row's :class:`ValueError` becomes a validation problem);
* the trainer calls::

      logits = head(hidden_states, attention_mask)   # (B, L, H), (B, L) -> (B, num_labels)
      loss = head.loss(logits, targets)
      scores = head.metrics(head.predict(logits), targets)

* checkpoints save ``head.config_dict()`` next to the weights; ``from_config`` rebuilds it;
* ``Pipeline.classify`` answers with :meth:`TaskHead.describe` of one sample's logits.

``problem_type == "generate"`` is the one value the engine reads: such a head answers in
text through the language model's ``lm_head`` (no head weights, LM loss). Any other value
(``single_label``, ``multi_label``, ``regression``...) describes the head's outputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from .errors import ConfigError

#: The problem types the base class gives default target encoding and descriptions for; a head
#: may declare another (it then implements :meth:`TaskHead.encode_targets`).
PROBLEM_TYPES: tuple[str, ...] = ("generate", "single_label", "multi_label")


class TaskHead(torch.nn.Module, ABC):
    """Base class of task heads.

    Subclasses set the class attributes ``name`` (unique, used in recipes and saved configs)
    and ``problem_type`` (``generate``, ``single_label``, ``multi_label``, or their own word
    such as ``regression``), build their layers in ``__init__`` (after
    ``super().__init__(hidden_size, labels)``) and implement :meth:`forward`, :meth:`loss`
    and :meth:`metrics`. A head with its own label format overrides :meth:`encode_targets`
    (and :meth:`describe`, :meth:`predict`); one whose ``__init__`` takes more arguments adds
    them to :meth:`config_dict`.

    Args:
        hidden_size: width ``H`` of the hidden states the head receives.
        labels: class names, in logit order (may be empty only for ``generate`` heads).
    """

    name: ClassVar[str]
    problem_type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("problem_type")
        if isinstance(kind, str) and kind not in PROBLEM_TYPES and cls.encode_targets is TaskHead.encode_targets:
            raise TypeError(f"head {cls.__qualname__}: problem_type {kind!r} has no default label format; "
                            "implement encode_targets (and describe) for it")

    def __init__(self, hidden_size: int, labels: list[str]) -> None:
        super().__init__()
        kind = getattr(type(self), "problem_type", None)
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"head {type(self).__qualname__}: problem_type must be a non-empty string such as "
                              f"{', '.join(PROBLEM_TYPES)}, got {kind!r}")
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

    @property
    def generates(self) -> bool:
        """True for heads that answer in text through the language model (``problem_type == "generate"``)."""
        return self.problem_type == "generate"

    # -- the head's label format ---------------------------------------------------------------
    @classmethod
    def check_labels(cls, labels: list[str]) -> list[str]:
        """Problems with a recipe's label list for this head, in words (empty: fine).

        The default asks a non-``generate`` head for at least one label; built-ins add their
        own rules (``classify`` needs two).
        """
        if cls.problem_type != "generate" and not labels:
            return [f"a {cls.name} head needs at least one label"]
        return []

    def encode_targets(self, labels: list[str] | None, answer: str | None) -> Any:
        """The training target of one data row, from its ``labels`` and its answer text.

        The default understands ``single_label`` (exactly one known label -> its index) and
        ``multi_label`` (known labels -> a multi-hot list of floats); ``generate`` heads take
        the answer tokens as targets and return ``None``. Override for another label format;
        return something ``torch.tensor`` can stack across a batch (an int, a float, a list).

        Raises:
            ValueError: the row's labels / answer do not fit this head; the message becomes
                the row's validation problem.
        """
        if self.problem_type == "generate":
            return None
        if labels is None:
            raise ValueError(f"no 'labels' for the {self.name} head")
        unknown = [label for label in labels if label not in self.labels]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown}; the head's labels are: {', '.join(self.labels)}")
        if self.problem_type == "single_label":
            if len(labels) != 1:
                raise ValueError(f"a {self.name} head needs exactly one label, got {len(labels)}: {labels}")
            return self.labels.index(labels[0])
        if self.problem_type == "multi_label":
            return [1.0 if name in labels else 0.0 for name in self.labels]
        raise TypeError(f"head {self.name!r} (problem_type {self.problem_type!r}) must implement encode_targets")

    def describe(self, logits: torch.Tensor) -> dict[str, Any]:
        """One sample's logits ``(num_labels,)`` as a JSON-ready answer (what ``Pipeline.classify`` returns).

        Default: ``{"labels": [predicted labels], "scores": {label: probability}}`` with a
        softmax for ``single_label`` and per-label sigmoids for ``multi_label``; other
        problem types get ``{"outputs": {label: value}}``.
        """
        logits = logits.detach().float().reshape(-1)
        predicted = self.predict(logits[None])[0]
        if self.problem_type == "single_label":
            scores = logits.softmax(-1)
            chosen = [self.labels[int(predicted)]]
        elif self.problem_type == "multi_label":
            scores = logits.sigmoid()
            chosen = [label for label, on in zip(self.labels, predicted.tolist()) if on]
        else:
            return {"outputs": {label: float(v) for label, v in zip(self.labels, logits.tolist())}}
        return {"labels": chosen, "scores": {label: float(p) for label, p in zip(self.labels, scores.tolist())}}

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
        """Evaluation scores (e.g. ``accuracy``) of :meth:`predict` outputs against ``targets``.

        ``LongLLaVATrainer.evaluate`` and ``longllava-sdk eval`` both score through this
        method. A score that is a matrix is flattened into the dict: a confusion matrix is
        ``confusion/<gold label>/<predicted label>`` counts (missing cells are 0), which
        ``longllava-sdk eval`` rebuilds into a table; ``eval`` reports ``accuracy`` per
        needle-in-a-haystack cell, so a head that can compute one should.
        """

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
