"""VNBench-style diagnostics: retrieval, ordering and counting needles in long frame sequences.

VNBench (Zhao et al. 2024, "Needle in a video haystack"; the LongLLaVA paper's Table 3)
inserts synthetic needles into videos and asks multiple-choice questions about them. Built
here the same way as :mod:`.niah` (real haystack images, rendered needle cards, verified
to be the only place the answer is):

==========  ======================================  ==========================================
task        needles                                 question (4 options, answer a letter)
==========  ======================================  ==========================================
retrieval   one card                                what does the card show?
ordering    3 cards with different values           in which order do the values appear?
counting    the same card on k frames (1..4)        how many frames show the card of X?
==========  ======================================  ==========================================

Each task comes with both of VNBench's needle forms: ``overlay`` (the card edited into a real
frame, VNBench's "E") and ``insert`` (the card as an extra image, VNBench's "I"). Scores are
reported per task and form, per task, and overall, like Table 3.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..options import LoadOptions, reject_unknown, take_options
from ..processing.processor import LongLLaVAProcessor
from .haystack import INSERTIONS, Haystack, HaystackPlan, HaystackPool, Placement, build_haystack, verify_haystack
from .needles import OPTION_LETTERS, NeedleKind, format_options, needle_kind
from .niah import CHOICE_INSTRUCTION, HaystackOptions, needle_case, open_pool, stable_rng
from .predict import EvalCase, Predictor
from .runner import CaseSpec, EvalReport, default_output_dir, run_items, summarise
from .store import RunStore, folder_fingerprint
from .tables import grid_table, percent

__all__ = ["VNBENCH_TASKS", "VNBenchItem", "plan_vnbench", "build_vnbench_haystack", "evaluate_vnbench",
           "ORDERING_NEEDLES", "MAX_COUNT", "NUM_OPTIONS"]

VNBENCH_TASKS: tuple[str, ...] = ("retrieval", "ordering", "counting")
#: Needles of an ordering item.
ORDERING_NEEDLES = 3
#: Most needles of a counting item.
MAX_COUNT = 4
NUM_OPTIONS = 4
#: Table 3's column names for the two needle forms.
FORM_NAMES = {"overlay": "E (overlay)", "insert": "I (insert)"}


@dataclass(frozen=True)
class VNBenchItem:
    """One multiple-choice item, decided before any image exists.

    Attributes:
        id: ``vnbench-<task>-<insertion>-n<N>-<index>``.
        task: ``retrieval``, ``ordering`` or ``counting``.
        question: the question without its options.
        options: the choices, in the order shown (``(A)`` first).
        answer: the right option's text.
        absent: values whose cards must be in no image (verification).
        plan: the haystack and its needles.
    """

    id: str
    task: str
    question: str
    options: tuple[str, ...]
    answer: str
    absent: tuple[str, ...]
    plan: HaystackPlan

    @property
    def answer_letter(self) -> str:
        return OPTION_LETTERS[self.options.index(self.answer)]

    def prompt(self) -> str:
        return f"{self.question}\nOptions:\n{format_options(list(self.options))}\n{CHOICE_INSTRUCTION}"

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "question": self.prompt(), "options": list(self.options), "answer": self.answer,
                "answer_letter": self.answer_letter, "haystack": self.plan.to_json()}


#: (question, options, the right option, needle placements, values that must be absent)
TaskDraw = tuple[str, list[str], str, list[Placement], list[str]]


def _retrieval(rng: random.Random, n: int, vocabulary: list[str], kind: NeedleKind) -> TaskDraw:
    value = rng.choice(vocabulary)
    wrong = rng.sample([v for v in vocabulary if v != value], NUM_OPTIONS - 1)
    question = f"One frame of this video shows {kind.card}. What is the {kind.what}?"
    return question, [value, *wrong], value, [Placement(rng.randrange(n), value)], wrong


def _ordering(rng: random.Random, n: int, vocabulary: list[str], kind: NeedleKind) -> TaskDraw:
    values = rng.sample(vocabulary, ORDERING_NEEDLES)  # in order of appearance
    positions = sorted(rng.sample(range(n), ORDERING_NEEDLES))
    answer = ", ".join(values)
    others = [", ".join(p) for p in itertools.permutations(values) if list(p) != values]
    unused = [v for v in vocabulary if v not in values]
    question = f"Several frames of this video show {kind.cards}. In which order do the {kind.whats} appear?"
    return (question, [answer, *rng.sample(others, NUM_OPTIONS - 1)], answer,
            [Placement(p, v) for p, v in zip(positions, values)], rng.sample(unused, min(3, len(unused))))


def _counting(rng: random.Random, n: int, vocabulary: list[str], kind: NeedleKind) -> TaskDraw:
    value = rng.choice(vocabulary)
    count = rng.randint(1, min(MAX_COUNT, n))
    positions = sorted(rng.sample(range(n), count))
    wrong = rng.sample([c for c in range(1, MAX_COUNT + 3) if c != count], NUM_OPTIONS - 1)
    unused = [v for v in vocabulary if v != value]
    question = f"How many frames of this video show {kind.showing(value)}?"
    return (question, [str(count), *(str(c) for c in wrong)], str(count), [Placement(p, value) for p in positions],
            rng.sample(unused, min(3, len(unused))))


_TASKS = {"retrieval": _retrieval, "ordering": _ordering, "counting": _counting}


def plan_vnbench(*, pool_size: int, num_images: Sequence[int], tasks: Sequence[str] = VNBENCH_TASKS,
                 insertions: Sequence[str] = INSERTIONS, samples_per_task: int = 4, kind: str = "word",
                 needle_scale: float = 0.5, seed: int = 0) -> list[VNBenchItem]:
    """Every item: ``samples_per_task`` per (task, insertion, haystack size), deterministic per ``seed``.

    Options are shuffled per item (counting options are listed in increasing order, as
    numbers are); the needle positions are drawn uniformly among the haystack's images.
    """
    needle = needle_kind(kind)
    vocabulary = list(needle.vocabulary)
    unknown = [t for t in tasks if t not in _TASKS]
    if unknown or not tasks:
        raise ConfigError(f"unknown VNBench task(s) {unknown or tasks}; choose from {', '.join(VNBENCH_TASKS)}")
    bad = [i for i in insertions if i not in INSERTIONS]
    if bad or not insertions:
        raise ConfigError(f"unknown insertion(s) {bad or insertions}; choose from {', '.join(INSERTIONS)}")
    if len(vocabulary) < NUM_OPTIONS:
        raise ConfigError(f"a {kind} needle has {len(vocabulary)} values; multiple choice needs {NUM_OPTIONS}")
    smallest = ORDERING_NEEDLES if "ordering" in tasks else 1
    if not num_images or any(int(n) < smallest for n in num_images):
        raise ConfigError(f"num_images must be counts >= {smallest} (ordering places {ORDERING_NEEDLES} needles), "
                          f"got {list(num_images or [])}")
    if samples_per_task < 1 or pool_size < 1:
        raise ConfigError(f"samples_per_task must be >= 1 (got {samples_per_task}) and the pool non-empty")
    items = []
    for task in dict.fromkeys(tasks):
        for insertion in dict.fromkeys(insertions):
            for n in dict.fromkeys(int(n) for n in num_images):
                for index in range(samples_per_task):
                    rng = stable_rng(seed, "vnbench", task, insertion, n, index)
                    question, options, answer, placements, absent = _TASKS[task](rng, n, vocabulary, needle)
                    if task == "counting":
                        options.sort(key=int)
                    else:
                        rng.shuffle(options)
                    plan = HaystackPlan(num_images=n, start=rng.randrange(pool_size), insertion=insertion, kind=kind,
                                        placements=tuple(placements), needle_scale=needle_scale,
                                        seed=rng.randrange(2 ** 31))
                    items.append(VNBenchItem(f"vnbench-{task}-{insertion}-n{n}-{index}", task, question,
                                             tuple(options), answer, tuple(absent), plan))
    return items


def build_vnbench_haystack(item: VNBenchItem, pool: HaystackPool, *, verify: bool = True) -> Haystack:
    """The images of one item; with ``verify``, proves the needles are exactly where planned
    (a counting card on exactly ``k`` images, each ordering card on its own image) and the
    ``absent`` values' cards nowhere."""
    haystack = build_haystack(item.plan, pool, extra_values=item.absent)
    if verify:
        verify_haystack(haystack, item.absent)
    return haystack


def _vnbench_case(item: VNBenchItem, pool: HaystackPool, processor: LongLLaVAProcessor, verify: bool) -> EvalCase:
    haystack = build_vnbench_haystack(item, pool, verify=verify)
    return needle_case(processor, haystack, item.prompt(), item.answer_letter, [item.answer_letter])


def evaluate_vnbench(
    *,
    model: str,
    output: str | None = None,
    tasks: list[str] | None = None,
    insertions: list[str] | None = None,
    num_images: list[int] | None = None,
    samples_per_task: int = 4,
    haystack_options: HaystackOptions | None = None,
    load: LoadOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **fields: Any,
) -> EvalReport:
    """VNBench-style retrieval / ordering / counting: multiple-choice accuracy per task, like the paper's Table 3.

    Needle cards are overlaid on real frames (E) or inserted as extra images (I) of long
    frame sequences; the model answers with an option letter (parsed robustly: "B", "(B)",
    "Answer: B"...). Scored items are logged as they finish; rerunning the same command resumes.

    Args:
        model: model folder (safetensors); a model with a task head needs the option letters as its labels.
        output: run folder (default eval-runs/vnbench-<model>-<hash of the settings>).
        tasks: any of retrieval, ordering, counting (default: all three).
        insertions: overlay (VNBench's E: edited frames) and / or insert (I: extra images); default both.
        num_images: haystack sizes, needles included (default 16, or fewer if the context is smaller).
        samples_per_task: items per task, needle form and haystack size.
        haystack_options: the haystack and its needles (:class:`~.niah.HaystackOptions`; flat flags on the CLI).
        load: device / dtype of the model (:class:`~longllava_sdk.options.LoadOptions`).
        overwrite: discard a previous run with other settings in --output and start again.
        progress: show a progress bar.
        fields: :class:`~.niah.HaystackOptions` / :class:`~longllava_sdk.options.LoadOptions` fields by name.
    """
    opts = take_options(fields, HaystackOptions, haystack_options)
    load = take_options(fields, LoadOptions, load)
    reject_unknown(fields, "evaluate_vnbench")
    predictor = Predictor.from_model_folder(model, load=load, max_new_tokens=opts.max_new_tokens)
    pipeline = predictor.pipeline
    if not predictor.generates:
        missing = [letter for letter in OPTION_LETTERS[:NUM_OPTIONS] if letter not in predictor.head.labels]
        if missing:
            raise ConfigError(f"VNBench answers are option letters; the model's {predictor.head.name} head has labels "
                              f"{predictor.head.labels[:8]} (missing {missing})")
    size = int(opts.frame_size or pipeline.config.vision_config.image_size)
    pool = open_pool(opts, size)
    needle, seed, needle_scale = opts.needle, opts.seed, opts.needle_scale
    counts = list(num_images) if num_images else [max(ORDERING_NEEDLES, min(16, pipeline.default_max_images))]
    chosen_tasks = list(tasks) if tasks else list(VNBENCH_TASKS)
    forms = list(insertions) if insertions else list(INSERTIONS)
    items = plan_vnbench(pool_size=pool.size, num_images=counts, tasks=chosen_tasks, insertions=forms,
                         samples_per_task=samples_per_task, kind=needle, needle_scale=needle_scale, seed=seed)
    arguments = {"tasks": chosen_tasks, "insertions": forms, "num_images": counts,
                 "samples_per_task": samples_per_task, "needle": needle, "needle_scale": needle_scale, "seed": seed,
                 "max_new_tokens": opts.max_new_tokens, "verify": opts.verify, "dtype": load.dtype,
                 **({"quantize": load.quantize} if load.quantize else {})}
    identity = {"mode": "vnbench", "arguments": arguments, "model": folder_fingerprint(model),
                "haystack": pool.describe()}
    store = RunStore(Path(output) if output else default_output_dir("vnbench", model, identity), identity,
                     overwrite=overwrite)
    specs = [CaseSpec(item.id, {"task": item.task, "insertion": item.plan.insertion,
                                "num_images": item.plan.num_images}, item.to_json(),
                      functools.partial(_vnbench_case, item, pool, pipeline.processor, opts.verify)) for item in items]
    records, scored = run_items(specs, predictor, store, description="vnbench", progress=progress)
    metrics, groups = summarise(predictor.head, records, {"task x insertion": ("task", "insertion"),
                                                          "task": ("task",), "insertion": ("insertion",),
                                                          "num_images": ("num_images",)})
    chance = 1.0 / NUM_OPTIONS
    table = grid_table(groups["task x insertion"], row_key="task", col_key="insertion", metric="accuracy",
                       corner="task \\ needle", row_margin=groups["task"], col_margin=groups["insertion"],
                       overall=metrics.get("accuracy"), col_label=lambda i: FORM_NAMES.get(i, i))
    table += f"\n\naccuracy {percent(metrics.get('accuracy'))}% over {len(records)} items (chance {percent(chance)}%)"
    report = EvalReport(mode="vnbench", model=str(model), head=predictor.head.name, output_dir=store.directory,
                        metrics=metrics, groups=groups, records=records, scored=scored,
                        resumed=len(records) - scored, report_path=store.path("report.json"), table=table,
                        extra={"chance": chance, "arguments": arguments, "haystack": pool.describe()})
    store.write_report(report.to_json())
    return report
