"""Running a model folder on evaluation items and scoring them through its task head.

The head saved in the model folder decides everything a score depends on, exactly as in
``LongLLaVATrainer.evaluate``:

* a ``generate`` head (or no head): the model answers greedily in text after the prompt;
  the prediction is that text, the target the reference answer, and the scores are
  ``head.metrics(predictions, references)``;
* any other head: the prediction is ``head.predict(logits)`` of the prompt's
  ``(1, num_labels)`` logits, the target ``head.encode_targets(labels, answer)``, and the
  scores ``head.metrics(stacked predictions, stacked targets)``.

Predictions and targets are kept as JSON values (text, an index, a 0/1 list), so a resumed
run scores items predicted by an earlier process exactly like fresh ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..heads import TaskHead
from ..options import LoadOptions
from ..pipeline import Pipeline
from ..registry import get_head_class
from ..processing.processor import EncodedSample
from ..training.trainer import decode_generated

__all__ = ["EvalCase", "Prediction", "Predictor", "score", "item_score", "GENERATE_HEAD"]

#: The head a model folder without ``head_config.json`` answers with (text through its ``lm_head``).
GENERATE_HEAD = "generate"


@dataclass
class EvalCase:
    """One item, materialised (images included).

    Attributes:
        prompt: the conversation up to and including the assistant header (what generation
            continues), with its images: ``input_ids`` ``(L,)`` with ``tokens_per_image``
            placeholders per image.
        reference: the answer text a ``generate`` head's output is compared with.
        labels: the item's labels for a non-generate head (``encode_targets(labels, reference)``).
        target: the head target, when already encoded (dataset rows); else built from ``labels``.
    """

    prompt: EncodedSample
    reference: str
    labels: list[str] | None = None
    target: Any = None


@dataclass
class Prediction:
    """What a model said about one item, as JSON values.

    Attributes:
        prediction: the generated text, or ``head.predict`` of the logits (an index / a 0/1 list).
        target: the reference text, or the encoded head target.
        details: extra facts for the report (``head.describe`` of the logits for heads).
    """

    prediction: Any
    target: Any
    details: dict[str, Any] = field(default_factory=dict)


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class Predictor:
    """A loaded model folder and its head, answering :class:`EvalCase` items one at a time.

    Args:
        pipeline: the loaded model (``Pipeline.from_pretrained``).
        max_new_tokens: the longest generated answer (a reference's own length + 8 tokens
            bounds it further, as in ``LongLLaVATrainer.evaluate``).
    """

    def __init__(self, pipeline: Pipeline, max_new_tokens: int = 16) -> None:
        self.pipeline = pipeline
        self.max_new_tokens = int(max_new_tokens)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        hidden = pipeline.config.text_config.hidden_size
        self.head: TaskHead = pipeline.head if pipeline.head is not None else get_head_class(GENERATE_HEAD)(hidden)

    @classmethod
    def from_model_folder(cls, model: str, *, load: LoadOptions | None = None, max_new_tokens: int = 16) -> "Predictor":
        """Load ``model`` (a model folder: safetensors, processor files, optional head) as ``load`` says."""
        from transformers.utils import logging as hf_logging

        # an evaluation prints its own progress bar; transformers' weight-loading bar would be noise
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            pipeline = Pipeline.from_pretrained(model, **(load or LoadOptions()).kwargs())
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        return cls(pipeline, max_new_tokens=max_new_tokens)

    @property
    def generates(self) -> bool:
        return self.head.generates

    def _inputs(self, prompt: EncodedSample) -> dict[str, torch.Tensor]:
        model = self.pipeline.model
        batch = self.pipeline.processor.collate_for_generation([prompt])
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.vision_tower.dtype)
        return inputs

    def target(self, case: EvalCase) -> Any:
        """The item's target: its reference text (generate) or the head's encoding of its labels."""
        if self.generates:
            return case.reference
        if case.target is not None:
            return _json_value(case.target)
        try:
            return _json_value(self.head.encode_targets(case.labels, case.reference))
        except ValueError as exc:
            raise ConfigError(f"the model's {self.head.name} head cannot score this item: {exc}") from exc

    @torch.inference_mode()
    def predict(self, case: EvalCase) -> Prediction:
        """Run the model on one item: ``(prediction, target)`` as JSON values."""
        target = self.target(case)
        inputs = self._inputs(case.prompt)
        model = self.pipeline.model
        if self.generates:
            tokenizer = self.pipeline.processor.tokenizer
            reference_tokens = len(tokenizer(case.reference, add_special_tokens=False)["input_ids"])
            output = model.generate(**inputs, max_new_tokens=min(self.max_new_tokens, reference_tokens + 8),
                                    do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)
            text = decode_generated(output[0, inputs["input_ids"].shape[1]:].tolist(), self.pipeline.processor)
            return Prediction(text, target)
        from ..modeling.task_model import TaskModel

        logits = TaskModel(model, self.head)(**inputs)["logits"]  # (1, num_labels)
        predicted = self.head.predict(logits)[0]
        return Prediction(_json_value(predicted.cpu()), target, {"output": self.head.describe(logits[0].cpu())})


def score(head: TaskHead, predictions: Sequence[Any], targets: Sequence[Any]) -> dict[str, float]:
    """``head.metrics`` of JSON predictions / targets (texts for ``generate``, stacked tensors otherwise)."""
    if not predictions:
        return {}
    if head.generates:
        return dict(head.metrics(list(predictions), list(targets)))
    return dict(head.metrics(torch.tensor(list(predictions)), torch.tensor(list(targets))))


def item_score(head: TaskHead, prediction: Any, target: Any, metric: str = "accuracy") -> float | None:
    """One item's ``metric`` (its ``accuracy``: 1.0 right, 0.0 wrong), or ``None`` if the head has no such score."""
    value = score(head, [prediction], [target]).get(metric)
    return None if value is None else float(value)
