"""Evaluating a model folder on a dataset in the SDK's data format, or on a domain recipe's sample.

The rows are read, validated and encoded exactly as for training
(:func:`~longllava_sdk.training.data.prepare_datasets`: LLaVA conversations or domain
manifests, media through the input adapters with the recipe's options), and each row is
scored exactly as ``LongLLaVATrainer.evaluate`` scores it: the prompt is the conversation up
to its final answer (:func:`~longllava_sdk.training.trainer.split_for_generation`), and the
model folder's head decides the metrics --

* ``generate``: greedy answer vs the final answer's text -- accuracy (normalised exact
  match; option letters parsed robustly), yes/no accuracy, open-answer token F1 / recall /
  BLEU-1 (the generate head's ``answer_metrics``);
* any other head: its ``predict`` vs its ``encode_targets`` of the row's labels -- e.g. per
  label and macro precision / recall / F1 (multi-label), accuracy and a confusion matrix
  (single-label).

Every scalar metric is shown next to its chance baselines (:mod:`longllava_sdk.chance`), and
a model folder that records random initial weights (``init-model``, a fine-tune of a new
preset model) gets a line saying it is a demo expected to score near chance.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..chance import chance_baselines
from ..errors import ConfigError
from ..heads import TaskHead
from ..isolation import DecodeLimits, requested_limits
from ..model_folders import random_init_of, read_training_info
from ..options import LoadOptions, reject_unknown, take_options
from ..processing.processor import LongLLaVAProcessor
from ..recipes import load_recipe
from ..training.data import TrainingDataset, final_answer, prepare_datasets
from ..training.trainer import split_for_generation
from .predict import EvalCase, Predictor, score
from .runner import CaseSpec, EvalReport, confusion_matrix, default_output_dir, run_items, summarise
from .store import RunStore, file_fingerprint, folder_fingerprint
from .tables import metrics_table, random_weights_note

__all__ = ["evaluate_data", "SPLITS"]

#: ``auto``: the held-out rows when the data has any, else every row.
SPLITS: tuple[str, ...] = ("auto", "eval", "train", "all")


def _data_case(dataset: TrainingDataset, index: int, processor: LongLLaVAProcessor, head: TaskHead) -> EvalCase:
    sample = dataset[index]
    prompt, reference = split_for_generation(sample, processor)
    if head.generates:
        return EvalCase(prompt=prompt, reference=reference)
    row = dataset.rows[index]
    return EvalCase(prompt=prompt, reference=final_answer(row) or "", labels=row.labels, target=sample.head_labels)


def _select(train: TrainingDataset, held_out: TrainingDataset | None, split: str) -> list[tuple[TrainingDataset, str]]:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "eval" and held_out is None:
        raise ConfigError("the data has no held-out rows (no 'split' column with eval/test/val rows, no eval_path)")
    if split == "train" or (split == "auto" and held_out is None):
        return [(train, "train")]
    if split == "all":
        return [(train, "train")] + ([(held_out, "eval")] if held_out is not None else [])
    assert held_out is not None
    return [(held_out, "eval")]


def evaluate_data(
    *,
    model: str,
    data: str | None = None,
    domain: str | None = None,
    data_root: str | None = None,
    split: str = "auto",
    output: str | None = None,
    max_images: int | None = None,
    adapter_options: dict[str, Any] | None = None,
    max_new_tokens: int = 64,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    isolate_decoding: bool = False,
    decode_timeout: float = DecodeLimits.timeout_s,
    decode_memory_mb: int = DecodeLimits.memory_mb,
    **fields: Any,
) -> EvalReport:
    """Score a model folder on a dataset (SDK data format) or a domain recipe's sample data.

    The head saved in the model folder decides the metrics: generated answers (exact match,
    yes/no, option letters, token F1) for generate, the head's own metrics (per-label and
    macro precision / recall / F1, accuracy, confusion matrix) otherwise -- the same metrics
    finetune reports. Scored rows are logged as they finish; rerunning the same command resumes.

    Args:
        model: model folder (safetensors).
        data: a data file: LLaVA JSON/JSONL or a CSV/JSONL manifest (paths relative to its folder).
        domain: a registered domain (medical, remote_sensing, video, ...) or a recipe .yaml: its
            sample data (or --data) read with its prompts, labels and adapter options.
        data_root: the folder every media path must stay inside (default: the data file's folder).
        split: auto (held-out rows if the data marks any, else all), eval, train or all.
        output: run folder (default eval-runs/data-<model>-<hash of the settings>).
        max_images: image budget per sample (default: the recipe's).
        adapter_options: options for the input adapters, KEY=VALUE (typed by each adapter's declared options).
        max_new_tokens: longest generated answer (each answer is also capped at its reference's length + 8 tokens).
        load: device / dtype of the model (:class:`~longllava_sdk.options.LoadOptions`).
        overwrite: discard a previous run with other settings in --output and start again.
        progress: show a progress bar.
        isolate_decoding: read every media file in a killable worker process under --decode-timeout and
            --decode-memory-mb (data you do not trust); a file past a limit is a bad row. Scores are unchanged.
        decode_timeout: with --isolate-decoding, seconds one source may take to decode (its worker is killed after).
        decode_memory_mb: with --isolate-decoding, MiB a decoding worker's address space may grow by.
        fields: :class:`~longllava_sdk.options.LoadOptions` fields by name (``device="cpu"``).
    """
    load = take_options(fields, LoadOptions, load)
    reject_unknown(fields, "evaluate_data")
    limits = requested_limits(isolate_decoding, decode_timeout, decode_memory_mb)
    if data is None and domain is None:
        raise ConfigError("nothing to evaluate on: pass a data file or a domain")
    predictor = Predictor.from_model_folder(model, load=load, max_new_tokens=max_new_tokens)
    processor = predictor.pipeline.processor
    recipe = load_recipe(domain) if domain is not None else None
    prepared = prepare_datasets(processor, recipe, data_path=data, data_root=data_root, max_images=max_images,
                                head=predictor.head, adapter_options=adapter_options, isolate_decoding=limits)
    chosen = _select(prepared.train, prepared.eval, split)
    arguments = {"split": split, "max_images": max_images, "adapter_options": adapter_options,
                 "max_new_tokens": max_new_tokens, "dtype": load.dtype, "data_root": data_root,
                 **({"quantize": load.quantize} if load.quantize else {})}
    identity = {"mode": "data", "arguments": arguments, "model": folder_fingerprint(model),
                "data": file_fingerprint(prepared.data_path), "recipe": recipe.to_dict() if recipe else None}
    store = RunStore(Path(output) if output else default_output_dir("data", model, identity), identity,
                     overwrite=overwrite)
    specs = []
    for dataset, split_name in chosen:
        for index, row in enumerate(dataset.rows):
            questions = [t["content"] for t in row.turns if t["role"] == "user"]
            info = {"question": questions[-1] if questions else "", "answer": final_answer(row), "labels": row.labels,
                    "source": f"{row.file.name} {row.where}"}
            specs.append(CaseSpec(row.id, {"split": split_name}, info,
                                  functools.partial(_data_case, dataset, index, processor, predictor.head)))
    records, scored = run_items(specs, predictor, store, description="eval", progress=progress)
    metrics, groups = summarise(predictor.head, records, {"split": ("split",)})
    labels = list(predictor.head.labels)
    confusion = confusion_matrix(metrics, labels)
    chance = chance_baselines(functools.partial(score, predictor.head), [r["target"] for r in records])
    where = ", ".join(f"{len(d)} {name} rows" for d, name in chosen)
    table = (f"{predictor.head.name} head on {where} of {prepared.data_path.name}, next to the chance baselines "
             f"(always the most common answer / guessing from the answer distribution)\n\n"
             + metrics_table(metrics, labels, chance=chance))
    info = read_training_info(model)
    note = random_weights_note(random_init_of(model), info.get("trained_steps"), info.get("trained_rows"))
    if note:
        table += "\n\n" + note
    report = EvalReport(mode="data", model=str(model), head=predictor.head.name, output_dir=store.directory,
                        metrics=metrics, groups=groups, records=records, scored=scored,
                        resumed=len(records) - scored, report_path=store.path("report.json"), table=table,
                        extra={"data": str(prepared.data_path), "domain": recipe.name if recipe else None,
                               "arguments": arguments, "skipped": prepared.skipped, "chance": chance,
                               "random_init": random_init_of(model),
                               **({"confusion": confusion} if confusion else {})})
    store.write_report(report.to_json())
    return report
