"""Evaluation: needle-in-a-haystack, VNBench-style diagnostics and dataset metrics (``longllava-sdk eval``).

* :func:`evaluate_niah` -- multimodal needle-in-a-haystack over a sweep of haystack sizes x
  needle depths, with the paper's heatmap (:mod:`.niah`);
* :func:`evaluate_vnbench` -- retrieval / ordering / counting multiple-choice items built the
  same way, scored per task as in the paper's Table 3 (:mod:`.vnbench`);
* :func:`evaluate_data` -- any dataset in the SDK's data format, or a domain recipe's sample,
  scored by the model folder's head exactly as the trainer's ``evaluate`` scores it
  (:mod:`.dataset`).

Each writes a resumable run folder (:mod:`.store`) and returns an :class:`EvalReport`.
The generators are usable on their own: :class:`HaystackPool`, :func:`plan_niah`,
:func:`build_niah_haystack`, :func:`plan_vnbench`, :func:`build_vnbench_haystack`,
:func:`verify_haystack`, :func:`render_card`, :func:`find_card`.
"""

from __future__ import annotations

from .dataset import evaluate_data
from .haystack import Haystack, HaystackPlan, HaystackPool, HaystackSource, Placement, build_haystack, verify_haystack
from .needles import NEEDLE_KINDS, find_card, needle_kind, render_card
from .niah import NiahItem, build_niah_haystack, evaluate_niah, iter_niah, plan_niah
from .runner import CaseSpec, EvalReport
from .store import RunStore
from .vnbench import VNBENCH_TASKS, VNBenchItem, build_vnbench_haystack, evaluate_vnbench, plan_vnbench

__all__ = [
    "evaluate_niah", "evaluate_vnbench", "evaluate_data", "EvalReport", "CaseSpec", "RunStore",
    "HaystackPool", "HaystackSource", "HaystackPlan", "Placement", "Haystack", "build_haystack", "verify_haystack",
    "NEEDLE_KINDS", "needle_kind", "render_card", "find_card",
    "NiahItem", "plan_niah", "build_niah_haystack", "iter_niah",
    "VNBENCH_TASKS", "VNBenchItem", "plan_vnbench", "build_vnbench_haystack",
]
