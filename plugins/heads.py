"""The built-in task heads, registered like any third-party plugin's.

* ``generate`` (default): the language model's own ``lm_head`` answers in text. It has no
  weights; its metrics compare generated answers with the references: closed questions
  (reference ``yes`` / ``no``) by normalised exact match, multiple-choice questions
  (reference an option letter) by the option letter parsed from the answer, open ones by
  token F1, recall and BLEU-1, the usual medical-VQA (VQA-RAD / SLAKE) reporting.
* ``multilabel``: a linear layer on the masked-mean pooled hidden state, one logit per
  label, binary cross-entropy; accuracy / precision / recall / F1 per label and macro
  (e.g. the 18 CT-RATE abnormalities of a chest CT volume).
* ``classify``: a linear layer on the pooled hidden state, softmax cross-entropy over the
  labels; accuracy, macro precision / recall / F1 and the confusion matrix (e.g. a
  remote-sensing scene class).

Heads are chosen by name (``head: {type: multilabel, labels: [...]}`` in a recipe, or
``--head``); the trainer saves ``head_config.json`` + ``head.safetensors`` with every
checkpoint and export, and ``Pipeline`` rebuilds the head from them. They are registered by
:mod:`longllava_plugins.heads_hooks` (the ``heads`` entry point), which imports this module only
when heads are asked for.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from longllava_sdk.errors import ConfigError
from longllava_sdk.heads import TaskHead

__all__ = ["GenerateHead", "MultiLabelHead", "ClassifyHead", "normalize_answer", "parse_option_letter",
           "option_letter_reference", "answer_metrics"]

CLOSED_ANSWERS = frozenset({"yes", "no"})
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


# ---------------------------------------------------------------------------------------------
# text answer metrics
# ---------------------------------------------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (SQuAD / VQA style)."""
    text = str(text).lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


# A reference that is an option letter: "B", "(B)", "B.", "b)".
_LETTER_ONLY = re.compile(r"^\s*[(\[]?([A-Za-z])[)\]]?[.:)]?\s*$")
# "Answer: B", "the answer is b) blue", "Option (C)", "correct choice is D."
_LETTER_AFTER_CUE = re.compile(
    r"\b(?:answer|option|choice)s?\b\s*(?:is|:|-|=)?\s*(?:option\s*|choice\s*)?[(\[]?([A-Za-z])[)\]]?(?=$|[\s.,:;!?)])",
    re.IGNORECASE)
# "b) blue", "B. blue", "(C) blue", "D: blue" at the start of the answer.
_LETTER_LEADING = re.compile(r"^\s*[(\[]?([A-Za-z])[)\].:](?=\s|$)")
# "(B)" anywhere: a bracketed letter is an option letter in any sentence.
_LETTER_BRACKETED = re.compile(r"(?<![A-Za-z])[(\[]([A-Za-z])[)\]]")
# A lone capital anywhere ("I would pick B"), unless it reads as a word: "A dog", "I think".
_LETTER_LONE_CAPITAL = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])(?!\s+[a-z])")


def option_letter_reference(reference: str) -> str | None:
    """The option letter a reference answer *is* (``"B"``, ``"(B)"``, ``"b."`` -> ``"B"``), else ``None``.

    Only a reference consisting of one letter (with brackets / a full stop) is a
    multiple-choice reference; ``"B cells"`` is an open answer.
    """
    match = _LETTER_ONLY.match(str(reference))
    return match.group(1).upper() if match else None


def parse_option_letter(text: str) -> str | None:
    """The option letter a generated answer chooses, upper case, or ``None`` when it names none.

    Tried in order (the first that matches decides): the whole answer is a letter (``"B"``,
    ``"(B)"``, ``"B."``); a letter after a cue word (``"Answer: B"``, ``"the answer is b)
    blue"``, ``"Option C"``); a letter opening the answer before ``)`` / ``.`` / ``:``
    (``"b) blue"``, ``"C. blue"``); a bracketed letter anywhere (``"I pick (D)"``); a lone
    capital anywhere that does not read as a word (``"so B"``, but not ``"A dog"`` or
    ``"I think"``). A lower-case letter followed by a word is never taken (``"the answer is
    a dog"`` names no option).
    """
    text = str(text)
    for pattern in (_LETTER_ONLY, _LETTER_AFTER_CUE, _LETTER_LEADING, _LETTER_BRACKETED, _LETTER_LONE_CAPITAL):
        for match in pattern.finditer(text):
            letter = match.group(1)
            # "the answer is a dog": a lower-case "a" / "i" before a word is an article / pronoun
            if letter.islower() and re.match(r"\s+[a-z]", text[match.end(1):]):
                continue
            return letter.upper()
    return None


def _token_f1(prediction: list[str], reference: list[str]) -> tuple[float, float, float]:
    """(precision, recall, F1) of the token multisets."""
    if not prediction or not reference:
        same = float(prediction == reference)
        return same, same, same
    common = sum((Counter(prediction) & Counter(reference)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(prediction), common / len(reference)
    return precision, recall, 2 * precision * recall / (precision + recall)


def _bleu1(prediction: list[str], reference: list[str]) -> float:
    """Clipped unigram precision times the brevity penalty (BLEU with n = 1, one reference)."""
    if not prediction:
        return 0.0
    clipped = sum((Counter(prediction) & Counter(reference)).values())
    precision = clipped / len(prediction)
    brevity = 1.0 if len(prediction) > len(reference) else math.exp(1 - len(reference) / len(prediction))
    return precision * brevity


def answer_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """VQA scores of generated ``predictions`` against ``references`` (same length).

    Each reference is one of three kinds: *closed* (``yes`` / ``no`` after normalising),
    *choice* (an option letter, :func:`option_letter_reference`) or *open* (anything else).

    Returns:
        ``accuracy`` over all items: a choice item counts when :func:`parse_option_letter` of
        the prediction is the reference's letter, any other item when the normalised
        prediction equals the normalised reference (exact match);
        ``closed_accuracy`` (the prediction's first word is the right yes / no),
        ``choice_accuracy`` (the parsed letter is right), ``open_recall`` /
        ``open_token_f1`` / ``open_bleu1`` (token overlap, over open items),
        ``token_f1`` / ``bleu1`` over all items (a choice item's is 1 or 0, its letter being
        its one token), and the counts ``n_closed`` / ``n_choice`` / ``n_open``.
        A score over an empty group is omitted.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    exact, closed, choice, f1s, bleus, open_f1, open_recall, open_bleu = [], [], [], [], [], [], [], []
    for prediction, reference in zip(predictions, references):
        letter = option_letter_reference(reference)
        if letter is not None:
            # normalize_answer drops "a" (an article): option letters are compared as letters
            hit = float(parse_option_letter(prediction) == letter)
            exact.append(hit)
            choice.append(hit)
            f1s.append(hit)
            bleus.append(hit)
            continue
        pred, ref = normalize_answer(prediction), normalize_answer(reference)
        pred_tokens, ref_tokens = pred.split(), ref.split()
        match = float(pred == ref)
        _, recall, f1 = _token_f1(pred_tokens, ref_tokens)
        bleu = _bleu1(pred_tokens, ref_tokens)
        exact.append(match)
        f1s.append(f1)
        bleus.append(bleu)
        if ref in CLOSED_ANSWERS:
            # a closed answer counts when the first word is the right yes/no ("yes, there is...")
            closed.append(float(bool(pred_tokens) and pred_tokens[0] == ref))
        else:
            open_f1.append(f1)
            open_recall.append(recall)
            open_bleu.append(bleu)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    out: dict[str, float] = {"n_closed": float(len(closed)), "n_choice": float(len(choice)),
                             "n_open": float(len(open_f1))}
    if exact:
        out.update(accuracy=mean(exact), token_f1=mean(f1s), bleu1=mean(bleus))
    if closed:
        out["closed_accuracy"] = mean(closed)
    if choice:
        out["choice_accuracy"] = mean(choice)
    if open_f1:
        out.update(open_token_f1=mean(open_f1), open_recall=mean(open_recall), open_bleu1=mean(open_bleu))
    return out


# ---------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------

class GenerateHead(TaskHead):
    """The language model's own ``lm_head``: answers are generated as text (no extra weights).

    ``forward`` passes hidden states through unchanged (the LLM's ``lm_head`` turns them
    into token logits); ``loss`` is the shifted token cross-entropy on ``(B, L, V)`` logits
    against ``(B, L)`` labels (``-100`` ignored); ``metrics`` takes lists of generated and
    reference answer strings (:func:`answer_metrics`).
    """

    name = "generate"
    problem_type = "generate"

    def __init__(self, hidden_size: int, labels: list[str] | None = None) -> None:
        super().__init__(hidden_size, list(labels or []))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)`` -> the same tensor (token logits come from the LLM's ``lm_head``)."""
        return hidden_states

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy: ``logits`` ``(B, L, V)``, ``targets`` ``(B, L)`` with ``-100`` ignored."""
        shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
        return F.cross_entropy(shifted, targets[:, 1:].reshape(-1).to(shifted.device), ignore_index=-100)

    def metrics(self, predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:  # type: ignore[override]
        """:func:`answer_metrics` of generated answers against reference answers."""
        return answer_metrics(list(predictions), list(targets))


class _PooledLinearHead(TaskHead):
    """Masked-mean pooling of the hidden states, dropout, one linear layer."""

    def __init__(self, hidden_size: int, labels: list[str], dropout: float = 0.1) -> None:
        super().__init__(hidden_size, labels)
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"head {self.name}: dropout must be in [0, 1), got {dropout}")
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifier = nn.Linear(hidden_size, self.num_labels)
        nn.init.normal_(self.classifier.weight, std=hidden_size ** -0.5)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, H)``, ``(B, L)`` -> logits ``(B, num_labels)`` (float32)."""
        pooled = self.pool(hidden_states.float(), attention_mask)
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype))).float()

    def config_dict(self) -> dict[str, Any]:
        return {**super().config_dict(), "dropout": self.dropout_p}


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


class MultiLabelHead(_PooledLinearHead):
    """Independent yes/no per label (sigmoid + binary cross-entropy) on the pooled hidden state.

    Targets are ``(B, num_labels)`` 0/1; predictions are ``logit > 0``.
    """

    name = "multilabel"
    problem_type = "multi_label"

    @classmethod
    def check_labels(cls, labels: list[str]) -> list[str]:
        return [] if labels else ["a multilabel head needs at least 1 label"]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy over samples and labels."""
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float().to(logits.device))

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Per label (``precision/<label>`` ...) and macro (mean over labels) accuracy / precision /
        recall / F1, plus ``accuracy`` over every (sample, label) decision and ``subset_accuracy``
        (all labels of a sample right)."""
        preds = predictions.detach().long().cpu().reshape(-1, self.num_labels)
        gold = targets.detach().round().long().cpu().reshape(-1, self.num_labels)
        if preds.shape != gold.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} vs targets {tuple(gold.shape)}")
        out: dict[str, float] = {}
        if preds.shape[0] == 0:
            return {"accuracy": 0.0, "subset_accuracy": 0.0, "macro_precision": 0.0, "macro_recall": 0.0,
                    "macro_f1": 0.0}
        per_p, per_r, per_f, per_a = [], [], [], []
        for index, label in enumerate(self.labels):
            p, g = preds[:, index], gold[:, index]
            tp = int(((p == 1) & (g == 1)).sum())
            fp = int(((p == 1) & (g == 0)).sum())
            fn = int(((p == 0) & (g == 1)).sum())
            precision, recall, f1 = _prf(tp, fp, fn)
            accuracy = float((p == g).float().mean())
            out[f"accuracy/{label}"], out[f"precision/{label}"] = accuracy, precision
            out[f"recall/{label}"], out[f"f1/{label}"] = recall, f1
            per_a.append(accuracy)
            per_p.append(precision)
            per_r.append(recall)
            per_f.append(f1)
        n = len(self.labels)
        out.update(
            accuracy=float((preds == gold).float().mean()),
            subset_accuracy=float((preds == gold).all(dim=1).float().mean()),
            macro_accuracy=sum(per_a) / n, macro_precision=sum(per_p) / n, macro_recall=sum(per_r) / n,
            macro_f1=sum(per_f) / n,
        )
        return out


class ClassifyHead(_PooledLinearHead):
    """One label per sample (softmax cross-entropy) on the pooled hidden state.

    Targets are ``(B,)`` class indices; predictions are the arg-max.
    """

    name = "classify"
    problem_type = "single_label"

    @classmethod
    def check_labels(cls, labels: list[str]) -> list[str]:
        return [] if len(labels) >= 2 else [f"a classify head needs at least 2 labels, got {len(labels)}"]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices ``(B,)``."""
        return F.cross_entropy(logits.float(), targets.long().to(logits.device))

    def metrics(self, predictions: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """``accuracy``, macro ``precision`` / ``recall`` / ``f1`` over the labels that occur in the
        targets or the predictions (as scikit-learn's ``average="macro"``), and the confusion
        matrix.

        The confusion matrix is flattened into the same ``dict[str, float]`` as every other
        score: ``confusion/<gold label>/<predicted label>`` is the number of samples of class
        *gold* predicted as *pred*. Only non-zero cells are listed (a missing cell is 0), so a
        head with many labels logs only the cells its data fills; the diagonal cells sum to
        ``accuracy`` times the sample count.
        """
        preds = predictions.detach().long().cpu().flatten()
        gold = targets.detach().long().cpu().flatten()
        if preds.numel() == 0:
            return {"accuracy": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0}
        present = sorted(set(preds.tolist()) | set(gold.tolist()))
        scores = [_prf(int(((preds == c) & (gold == c)).sum()), int(((preds == c) & (gold != c)).sum()),
                       int(((preds != c) & (gold == c)).sum())) for c in present]
        out = {
            "accuracy": float((preds == gold).float().mean()),
            "macro_precision": sum(s[0] for s in scores) / len(scores),
            "macro_recall": sum(s[1] for s in scores) / len(scores),
            "macro_f1": sum(s[2] for s in scores) / len(scores),
        }
        cells = Counter(zip(gold.tolist(), preds.tolist()))
        for (g, p), count in sorted(cells.items()):
            out[f"confusion/{self._label_name(g)}/{self._label_name(p)}"] = float(count)
        return out

    def _label_name(self, index: int) -> str:
        return self.labels[index] if 0 <= index < self.num_labels else str(index)
