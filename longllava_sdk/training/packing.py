"""Media-aware packing: many samples concatenated into sequences of at most ``max_length``.

The paper trains on samples randomly concatenated up to a long context, separated by
``<|endoftext|>``. Here every sample already ends with ``<|endoftext|>`` (the processor ends
each assistant answer with it) and starts with ``<|startoftext|>``, so concatenating encoded
samples gives exactly that layout.

Rules:

* lengths count ``tokens_per_image`` tokens per image (they come from validation, which
  encoded every sample with its real image count);
* a sample is never split across packs (its images could not be split either);
* no sample is dropped silently: one longer than ``max_length`` is listed in the
  :class:`PackingReport` (``did_not_fit``), and :class:`PackedDataset` refuses to start with
  any (``strict=True``) or warns (``strict=False``);
* packing is deterministic for a given ``seed``.

Strategies:

* ``"ffd"`` (default): first-fit decreasing. Samples sorted by length (ties in a seeded
  random order) each go into the first pack with room; uses at most 11/9 OPT + 6/9 packs.
  Packs are then put in a seeded random order.
* ``"random"``: the paper's random concatenation: samples in a seeded random order, each
  appended to the current pack while it fits, else a new pack starts (next fit).

Attention and Mamba state across packed samples are handled by
:class:`~longllava_sdk.training.collator.PackedCollator` (see ``docs/data_formats.md``).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetError
from ..processing.processor import IGNORE_INDEX, EncodedSample

__all__ = ["PACKING_STRATEGIES", "PackingReport", "PackingResult", "PackedSample", "PackedDataset", "pack_samples"]

PACKING_STRATEGIES: tuple[str, ...] = ("ffd", "random")


@dataclass
class PackingReport:
    """What packing did.

    Attributes:
        max_length: pack capacity in tokens.
        strategy: ``ffd`` or ``random``.
        num_samples: samples given.
        num_packs: packs made.
        packed_tokens: tokens in all packs.
        did_not_fit: ``(sample index, length)`` of samples longer than ``max_length``
            (in no pack).
    """

    max_length: int
    strategy: str
    num_samples: int
    num_packs: int
    packed_tokens: int
    did_not_fit: list[tuple[int, int]] = field(default_factory=list)

    @property
    def fill_ratio(self) -> float:
        """Packed tokens over pack capacity (1.0 = no padding at all)."""
        return self.packed_tokens / (self.num_packs * self.max_length) if self.num_packs else 0.0

    def __str__(self) -> str:
        text = (f"packed {self.num_samples - len(self.did_not_fit)}/{self.num_samples} samples into "
                f"{self.num_packs} packs of <= {self.max_length} tokens ({self.strategy}, "
                f"fill {self.fill_ratio:.1%})")
        if self.did_not_fit:
            shown = ", ".join(f"#{i} ({n} tokens)" for i, n in self.did_not_fit[:20])
            more = f" and {len(self.did_not_fit) - 20} more" if len(self.did_not_fit) > 20 else ""
            text += f"; {len(self.did_not_fit)} did not fit: {shown}{more}"
        return text


class PackingResult(NamedTuple):
    """``packs`` (lists of sample indices) and the :class:`PackingReport`."""

    packs: list[list[int]]
    report: PackingReport


def pack_samples(lengths: Sequence[int], max_length: int, seed: int = 0, strategy: str = "ffd") -> PackingResult:
    """Group sample indices into packs whose total length is at most ``max_length``.

    Args:
        lengths: token length of each sample (images counted as ``tokens_per_image`` each).
        max_length: capacity of a pack.
        seed: fixes tie order and pack order (``ffd``) or the concatenation order (``random``).
        strategy: ``"ffd"`` (first-fit decreasing) or ``"random"`` (paper-style next fit).

    Returns:
        ``(packs, report)``: every index appears in exactly one pack, or in
        ``report.did_not_fit`` when its length exceeds ``max_length``.
    """
    if strategy not in PACKING_STRATEGIES:
        raise ConfigError(f"unknown packing strategy {strategy!r}; use one of {', '.join(PACKING_STRATEGIES)}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"max_length must be a positive integer, got {max_length!r}")
    lengths = [int(n) for n in lengths]
    if any(n < 1 for n in lengths):
        bad = [i for i, n in enumerate(lengths) if n < 1][:10]
        raise ConfigError(f"sample lengths must be >= 1; samples {bad} are not")
    rng = random.Random(seed)
    did_not_fit = [(i, n) for i, n in enumerate(lengths) if n > max_length]
    fitting = [i for i, n in enumerate(lengths) if n <= max_length]
    if strategy == "ffd":
        tie_order = fitting[:]
        rng.shuffle(tie_order)
        rank = {index: r for r, index in enumerate(tie_order)}
        order = sorted(fitting, key=lambda i: (-lengths[i], rank[i]))
        packs = _first_fit(order, lengths, max_length)
        rng.shuffle(packs)
    else:
        order = fitting[:]
        rng.shuffle(order)
        packs = []
        room = 0
        for index in order:
            if not packs or lengths[index] > room:
                packs.append([])
                room = max_length
            packs[-1].append(index)
            room -= lengths[index]
    report = PackingReport(max_length=max_length, strategy=strategy, num_samples=len(lengths), num_packs=len(packs),
                           packed_tokens=sum(lengths[i] for i in fitting), did_not_fit=did_not_fit)
    return PackingResult(packs, report)


def _first_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """First fit in O(n log n): a max segment tree over the packs' remaining room."""
    size = 1
    while size < max(1, len(order)):
        size *= 2
    tree = [0] * (2 * size)  # leaf p: room left in pack p (0 for packs not opened yet)
    packs: list[list[int]] = []
    for index in order:
        need = lengths[index]
        if tree[1] >= need:
            node = 1
            while node < size:  # descend to the leftmost pack with enough room
                node = 2 * node if tree[2 * node] >= need else 2 * node + 1
            pack = node - size
        else:
            pack = len(packs)
            packs.append([])
            node = pack + size
            tree[node] = capacity
        packs[pack].append(index)
        tree[node] -= need
        node //= 2
        while node:
            tree[node] = max(tree[2 * node], tree[2 * node + 1])
            node //= 2
    return packs


@dataclass
class PackedSample(EncodedSample):
    """Several samples concatenated: ``input_ids`` / ``labels`` / ``images`` in sample order.

    Attributes:
        sample_lengths: token length of each sample, in order (they sum to ``len(input_ids)``).
        sample_ids: the samples' ids.
    """

    sample_lengths: list[int] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)


class PackedDataset(Dataset):
    """Packs of a :class:`~longllava_sdk.training.data.TrainingDataset` (``generate`` head only).

    Args:
        dataset: validated dataset (its ``lengths`` are used, nothing is decoded to pack).
        max_length: pack capacity (default: the dataset's ``max_length``).
        seed, strategy: see :func:`pack_samples`.
        strict: raise :class:`DatasetError` when a sample does not fit (default), else warn;
            either way the sample is listed in :attr:`report`.

    Items are :class:`PackedSample`; batch them with
    :class:`~longllava_sdk.training.collator.PackedCollator`.
    """

    def __init__(self, dataset, max_length: int | None = None, seed: int = 0, strategy: str = "ffd",
                 strict: bool = True) -> None:
        head = getattr(dataset, "head", None)
        if head is not None and not head.generates:
            raise ConfigError(f"packing needs a generate head; the {head.name} head reads one sample per "
                              "sequence (disable training.packing)")
        max_length = max_length if max_length is not None else getattr(dataset, "max_length", None)
        if max_length is None:
            raise ConfigError("PackedDataset needs max_length (the dataset has none)")
        self.dataset = dataset
        self.max_length = int(max_length)
        lengths = dataset.lengths
        self.packs, self.report = pack_samples(lengths, self.max_length, seed=seed, strategy=strategy)
        if self.report.did_not_fit:
            ids = dataset.ids if hasattr(dataset, "ids") else [str(i) for i in range(len(lengths))]
            problems = [f"sample {ids[i]!r} is {n} tokens > max_length {self.max_length}: not packed"
                        for i, n in self.report.did_not_fit]
            if strict:
                raise DatasetError("packing", problems)
            warnings.warn(f"{self.report}", stacklevel=2)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> PackedSample:
        out = PackedSample(input_ids=[], labels=[], images=[])
        for sample_index in self.packs[index]:
            sample = self.dataset[sample_index]
            labels = list(sample.labels)
            # The previous sample's last token must not learn to predict this sample's first token.
            labels[0] = IGNORE_INDEX
            out.input_ids.extend(sample.input_ids)
            out.labels.extend(labels)
            out.images.extend(sample.images)
            out.sample_lengths.append(len(sample.input_ids))
            out.sample_ids.append(getattr(sample, "sample_id", str(sample_index)))
        return out

    @property
    def lengths(self) -> list[int]:
        """Token length of each pack."""
        lengths = self.dataset.lengths
        return [sum(lengths[i] for i in pack) for pack in self.packs]
