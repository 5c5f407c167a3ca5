"""Multimodal needle-in-a-haystack (the LongLLaVA paper's appendix C).

A haystack is ``N`` real images (frames of real videos by default, or tiles / slices of any
media through the input adapters: :class:`~.haystack.HaystackPool`); one of them is the
*needle*: a card showing a code word, a digit or a coloured square
(:mod:`.needles`), placed at depth ``d`` -- image ``round(d * (N - 1))``, so depth 0 is the
first image and depth 1 the last. The question asks what the card shows, which no real
image can answer. A sweep over ``N`` x depth gives the paper's heatmap.

::

    from longllava_sdk.evaluation import evaluate_niah

    report = evaluate_niah(model="runs/video-lora/model", num_images=[8, 64, 256], depths=[0, 0.5, 1])
    report.groups["num_images x depth"]      # accuracy per cell; report.heatmap_path: the PNG

Everything is decided by the seed: :func:`plan_niah` lists the items (value, options, pool
window, needle position) without reading an image; :func:`build_niah_haystack` renders one
item's images when it is scored. Answers are ``open`` (the model writes the value; exact
match after normalising) or ``choice`` (VNBench-style options, the model answers a letter).
A model with a task head other than ``generate`` answers with its labels: the needles then
show those labels (e.g. a classify head over colour names with colour needles).
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import ConfigError
from ..media import Media
from ..options import LoadOptions, reject_unknown, take_options
from ..processing.processor import LongLLaVAProcessor
from .haystack import (INSERTIONS, Haystack, HaystackPlan, HaystackPool, HaystackSource, Placement, build_haystack,
                       verify_haystack)
from .needles import OPTION_LETTERS, NeedleKind, format_options, needle_kind
from .predict import EvalCase, Predictor
from .runner import CaseSpec, EvalReport, default_output_dir, run_items, summarise
from .store import HEATMAP_FILE, RunStore, folder_fingerprint
from .tables import grid_table, percent

__all__ = [
    "ANSWER_FORMATS", "DEFAULT_DEPTHS", "IMAGE_LADDER", "NiahItem", "default_num_images", "plan_niah",
    "build_niah_haystack", "iter_niah", "needle_case", "evaluate_niah", "stable_rng", "open_pool", "HaystackOptions",
]

ANSWER_FORMATS: tuple[str, ...] = ("open", "choice")
DEFAULT_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Haystack sizes of the default sweep, up to the paper's 1000 images; a model gets those that fit its context.
IMAGE_LADDER: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
#: The media kind haystacks are given as: frames of one video (``<vid>`` ... ``<t>`` ... ``</vid>``).
HAYSTACK_MEDIA_KIND = "video"
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def stable_rng(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded from ``parts`` (same parts, same numbers, in every process:
    Python's own ``hash`` of a string changes per process)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def default_num_images(max_images: int) -> list[int]:
    """The sweep's haystack sizes for a model that fits ``max_images`` images: :data:`IMAGE_LADDER` up to it."""
    fitting = [n for n in IMAGE_LADDER if n <= max_images]
    return fitting or [max(1, int(max_images))]


def _answer_hint(kind: NeedleKind) -> str:
    return {"word": "Answer with the code word only.", "digit": "Answer with the number only.",
            "colour": "Answer with the colour name only."}.get(kind.name, "Answer with one word.")


@dataclass(frozen=True)
class NiahItem:
    """One needle-in-a-haystack item, decided before any image exists.

    Attributes:
        id: ``niah-n<N>-d<depth>-r<repeat>``.
        num_images: ``N``, the needle included.
        depth: where the needle is, 0 (first image) .. 1 (last image).
        value: what the needle card shows (the answer).
        options: the choices shown (``choice`` format; empty for ``open``).
        absent: values whose cards must be in no image (the wrong options, or a few other
            values of the vocabulary for ``open``): what verification looks for.
        plan: the haystack (pool window, insertion, the needle's placement).
    """

    id: str
    num_images: int
    depth: float
    value: str
    options: tuple[str, ...]
    absent: tuple[str, ...]
    plan: HaystackPlan

    @property
    def position(self) -> int:
        return self.plan.placements[0].position

    @property
    def answer_letter(self) -> str | None:
        return OPTION_LETTERS[self.options.index(self.value)] if self.options else None

    @property
    def reference(self) -> str:
        """What a generated answer is compared with: the option letter, or the value itself."""
        return self.answer_letter or self.value

    def question(self) -> str:
        kind = needle_kind(self.plan.kind)
        asked = f"One frame of this video shows {kind.card}. What is the {kind.what}?"
        if self.options:
            return f"{asked}\nOptions:\n{format_options(list(self.options))}\n{CHOICE_INSTRUCTION}"
        return f"{asked} {_answer_hint(kind)}"

    def to_json(self) -> dict[str, Any]:
        return {"question": self.question(), "answer": self.value, "options": list(self.options),
                "needle_position": self.position, "haystack": self.plan.to_json()}


def plan_niah(*, pool_size: int, num_images: Sequence[int], depths: Sequence[float] = DEFAULT_DEPTHS,
              samples_per_cell: int = 1, kind: str = "word", values: Sequence[str] | None = None,
              answer_format: str = "open", insertion: str = "insert", needle_scale: float = 0.5,
              seed: int = 0) -> list[NiahItem]:
    """Every item of an ``N`` x depth sweep (``samples_per_cell`` per cell), deterministic per ``seed``.

    Args:
        pool_size: images in the haystack pool (each item starts its window at a seeded position).
        values: what needles may show (default: the kind's vocabulary; a head's labels for head models).
        answer_format: ``open`` or ``choice`` (up to 4 options: the value and 3 other values).
        insertion: ``insert`` (the needle is an extra image) or ``overlay`` (pasted on a frame).
    """
    needle = needle_kind(kind)
    vocabulary = needle.check_values(list(values) if values is not None else list(needle.vocabulary))
    vocabulary = list(dict.fromkeys(vocabulary))
    if answer_format not in ANSWER_FORMATS:
        raise ConfigError(f"unknown answer format {answer_format!r}; choose one of {', '.join(ANSWER_FORMATS)}")
    if insertion not in INSERTIONS:
        raise ConfigError(f"unknown insertion {insertion!r}; choose one of {', '.join(INSERTIONS)}")
    if not num_images or any(int(n) < 1 for n in num_images):
        raise ConfigError(f"num_images must be a non-empty list of counts >= 1, got {list(num_images or [])}")
    if not depths or any(not 0.0 <= float(d) <= 1.0 for d in depths):
        raise ConfigError(f"depths must be a non-empty list of fractions in [0, 1], got {list(depths or [])}")
    if samples_per_cell < 1:
        raise ConfigError(f"samples_per_cell must be >= 1, got {samples_per_cell}")
    if pool_size < 1:
        raise ConfigError("the haystack pool is empty")
    items = []
    for n in dict.fromkeys(int(n) for n in num_images):
        for depth in dict.fromkeys(float(d) for d in depths):
            for repeat in range(samples_per_cell):
                rng = stable_rng(seed, "niah", n, depth, repeat)
                value = rng.choice(vocabulary)
                others = [v for v in vocabulary if v != value]
                absent = tuple(rng.sample(others, min(3, len(others))))
                options: tuple[str, ...] = ()
                if answer_format == "choice":
                    shuffled = [value, *absent]
                    rng.shuffle(shuffled)
                    options = tuple(shuffled)
                position = round(depth * (n - 1))
                plan = HaystackPlan(num_images=n, start=rng.randrange(pool_size), insertion=insertion, kind=kind,
                                    placements=(Placement(position, value),), needle_scale=needle_scale,
                                    seed=rng.randrange(2 ** 31))
                items.append(NiahItem(f"niah-n{n}-d{depth:g}-r{repeat}", n, depth, value, options, absent, plan))
    return items


def build_niah_haystack(item: NiahItem, pool: HaystackPool, *, verify: bool = True) -> Haystack:
    """The images of one item; with ``verify``, proves the answer is only in the needle
    (:func:`~.haystack.verify_haystack`: the card in exactly image ``item.position``, the
    ``absent`` values' cards nowhere)."""
    haystack = build_haystack(item.plan, pool, extra_values=item.absent)
    if verify:
        verify_haystack(haystack, item.absent)
    return haystack


def iter_niah(items: Sequence[NiahItem], pool: HaystackPool, *, verify: bool = True
              ) -> Iterator[tuple[NiahItem, Haystack]]:
    """The haystacks of ``items``, built one at a time as the caller asks (a stream: only the
    current item's images are alive unless the caller keeps them)."""
    for item in items:
        yield item, build_niah_haystack(item, pool, verify=verify)


def needle_case(processor: LongLLaVAProcessor, haystack: Haystack, question: str, reference: str,
                labels: list[str]) -> EvalCase:
    """The prompt of a haystack question, as the model reads it: the images as the frames of
    one video, then the question, then the assistant header."""
    media = Media(kind=HAYSTACK_MEDIA_KIND, images=haystack.images, source="<haystack>")
    messages = [{"role": "user", "content": f"<image>\n{question}", "media": [media]}]
    prompt = processor.encode_conversation(messages, add_generation_prompt=True)
    assert prompt is not None  # no max_length: never dropped
    return EvalCase(prompt=prompt, reference=reference, labels=labels)


def _niah_case(item: NiahItem, pool: HaystackPool, processor: LongLLaVAProcessor, verify: bool) -> EvalCase:
    haystack = build_niah_haystack(item, pool, verify=verify)
    return needle_case(processor, haystack, item.question(), item.reference, [item.value])


@dataclass(frozen=True)
class HaystackOptions:
    """Where haystack images come from and how needles are drawn: shared by ``eval niah`` and ``eval vnbench``.

    Attributes:
        haystack: media files / folders to take the haystack images from (videos, GeoTIFFs,
            DICOM series, images); default: the --haystack-domain recipe's bundled media.
        haystack_domain: the domain whose bundled media form the default haystack.
        adapter_options: an option for the adapters reading the haystack, KEY=VALUE (typed by each
            adapter's declared options, see `longllava-sdk plugins --adapter NAME`), e.g. window=lung.
        images_per_source: at most this many images from one haystack source.
        frame_size: long side of every haystack image in pixels (default: the model's image size).
        needle: what the needle card shows: word, digit or colour.
        needle_scale: card height as a fraction of the frames' shorter side.
        seed: decides every item (values, options, haystack windows, card positions).
        max_new_tokens: longest generated answer.
        verify: check every haystack: each card exactly where planned, no other option's card anywhere.
    """

    haystack: list[str] | None = None
    haystack_domain: str = "video"
    adapter_options: dict[str, Any] | None = None
    images_per_source: int = 64
    frame_size: int | None = None
    needle: str = "word"
    needle_scale: float = 0.5
    seed: int = 0
    max_new_tokens: int = 16
    verify: bool = True


def open_pool(options: HaystackOptions, frame_size: int) -> HaystackPool:
    """The pool of ``options.haystack`` paths, else of the domain recipe's bundled media (read with its adapter options)."""
    adapter_options = dict(options.adapter_options or {})
    if options.haystack:
        return HaystackPool([HaystackSource(os.fspath(p), options=adapter_options) for p in options.haystack],
                            images_per_source=options.images_per_source, frame_size=frame_size)
    return HaystackPool.from_domain(options.haystack_domain, adapter_options=adapter_options,
                                    images_per_source=options.images_per_source, frame_size=frame_size)


def head_values(predictor: Predictor) -> list[str] | None:
    """The values needles show for a head model: its labels (``None``: a generating model, any value)."""
    return None if predictor.generates else list(predictor.head.labels)


def evaluate_niah(
    *,
    model: str,
    output: str | None = None,
    num_images: list[int] | None = None,
    depths: list[float] | None = None,
    samples_per_cell: int = 1,
    answer_format: str = "open",
    insertion: str = "insert",
    heatmap: bool = True,
    haystack_options: HaystackOptions | None = None,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **fields: Any,
) -> EvalReport:
    """Multimodal needle-in-a-haystack: accuracy by number of images and needle depth, with a heatmap.

    Every item is a haystack of real images with one needle card (a code word, digit or
    coloured square) at a given depth, and a question only the needle answers. Scored items
    are logged as they finish; rerunning the same command resumes. Writes report.json
    (per-item predictions + metrics) and heatmap.png in the output folder.

    Args:
        model: model folder (safetensors); its saved head decides how answers are scored.
        output: run folder (default eval-runs/niah-<model>-<hash of the settings>).
        num_images: haystack sizes N, needle included (default: 2, 4, 8, ... up to what fits
            the model's context, at most 1000).
        depths: needle depths in [0, 1] (default 0 0.25 0.5 0.75 1).
        samples_per_cell: items per (N, depth) cell.
        answer_format: open (the model writes the answer) or choice (options A-D, answer a letter).
        insertion: insert (the needle is an extra image) or overlay (pasted onto a real frame).
        heatmap: write heatmap.png (drawn with Pillow).
        haystack_options: the haystack and its needles (:class:`HaystackOptions`; flat flags on the CLI).
        load: device / dtype of the model (:class:`~longllava_sdk.options.LoadOptions`).
        overwrite: discard a previous run with other settings in --output and start again.
        progress: show a progress bar.
        fields: :class:`HaystackOptions` / :class:`~longllava_sdk.options.LoadOptions` fields by name
            (``seed=1``, ``device="cpu"``).
    """
    opts = take_options(fields, HaystackOptions, haystack_options)
    load = take_options(fields, LoadOptions, load)
    reject_unknown(fields, "evaluate_niah")
    from .heatmap import write_heatmap

    predictor = Predictor.from_model_folder(model, load=load, max_new_tokens=opts.max_new_tokens)
    pipeline = predictor.pipeline
    size = int(opts.frame_size or pipeline.config.vision_config.image_size)
    pool = open_pool(opts, size)
    needle, seed, needle_scale = opts.needle, opts.seed, opts.needle_scale
    counts = list(num_images) if num_images else default_num_images(min(pipeline.default_max_images, 1000))
    cell_depths = list(depths) if depths else list(DEFAULT_DEPTHS)
    items = plan_niah(pool_size=pool.size, num_images=counts, depths=cell_depths, samples_per_cell=samples_per_cell,
                      kind=needle, values=head_values(predictor), answer_format=answer_format, insertion=insertion,
                      needle_scale=needle_scale, seed=seed)
    arguments = {"num_images": counts, "depths": cell_depths, "samples_per_cell": samples_per_cell, "needle": needle,
                 "answer_format": answer_format, "insertion": insertion, "needle_scale": needle_scale, "seed": seed,
                 "max_new_tokens": opts.max_new_tokens, "verify": opts.verify, "dtype": load.dtype,
                 **({"quantize": load.quantize} if load.quantize else {})}
    identity = {"mode": "niah", "arguments": arguments, "model": folder_fingerprint(model), "haystack": pool.describe()}
    store = RunStore(Path(output) if output else default_output_dir("niah", model, identity), identity,
                     overwrite=overwrite)
    specs = [CaseSpec(item.id, {"num_images": item.num_images, "depth": item.depth}, item.to_json(),
                      functools.partial(_niah_case, item, pool, pipeline.processor, opts.verify)) for item in items]
    records, scored = run_items(specs, predictor, store, description="niah", progress=progress)
    metrics, groups = summarise(predictor.head, records, {"num_images x depth": ("num_images", "depth"),
                                                          "num_images": ("num_images",), "depth": ("depth",)})
    # a guess among the options, or among every value a needle can show
    values = head_values(predictor) or needle_kind(needle).vocabulary
    guesses = len(items[0].options) if items[0].options else len(values)
    chance = 1.0 / max(1, guesses)
    heatmap_path = None
    if heatmap:
        title = f"needle in a haystack: {Path(model).name}, {needle} needle, {insertion}, {answer_format} answers"
        heatmap_path = write_heatmap(groups["num_images x depth"], store.path(HEATMAP_FILE), title=title)
    table = grid_table(groups["num_images x depth"], row_key="depth", col_key="num_images", metric="accuracy",
                       corner="depth \\ images", row_margin=groups["depth"], col_margin=groups["num_images"],
                       overall=metrics.get("accuracy"), row_label=lambda d: f"{100 * d:.0f}%")
    table += f"\n\naccuracy {percent(metrics.get('accuracy'))}% over {len(records)} items (chance {percent(chance)}%)"
    report = EvalReport(mode="niah", model=str(model), head=predictor.head.name, output_dir=store.directory,
                        metrics=metrics, groups=groups, records=records, scored=scored,
                        resumed=len(records) - scored, report_path=store.path("report.json"),
                        heatmap_path=heatmap_path, table=table,
                        extra={"chance": chance, "arguments": arguments, "haystack": pool.describe()})
    store.write_report(report.to_json())
    return report
