"""Int8 inference: the language model's linear layers in 8 bits, Mamba and the vision path kept as they are.

::

    pipe = Pipeline.from_pretrained("runs/ct/model", quantize="int8")     # or: infer --quantize int8

What is quantized follows the released models' evaluation setup (the paper evaluates
LongLLaVA in Int8; the official loader uses ``BitsAndBytesConfig(load_in_8bit=True,
llm_int8_skip_modules=["mamba"])``):

* **quantized**: every ``nn.Linear`` of the language model outside the Mamba mixers --
  attention ``q/k/v/o_proj``, dense MLPs (``gate/up/down_proj``), MoE routers;
* **kept in their dtype**: the Mamba mixers whole (``in_proj``, ``x_proj``, ``dt_proj``,
  ``out_proj``, the SSM parameters ``A_log`` / ``D``, the convolution), the vision tower, the
  projector, the embeddings and ``lm_head`` (as bitsandbytes keeps it by default), and
  transformers' fused MoE experts (3-D parameters, not ``nn.Linear``: neither backend
  quantizes them).

Backends:

* **CPU**: PyTorch's dynamic quantization (``torch.ao.quantization.quantize_dynamic``):
  int8 weights with one scale per output channel, activations quantized on the fly,
  fbgemm / onednn kernels. torch
  2.13 marks that API deprecated in favour of torchao, whose CPU build for torch 2.13 loads
  with errors about missing CUDA libraries; the move is due with the next torch bump.
* **CUDA**: bitsandbytes LLM.int8 through transformers' ``BitsAndBytesConfig`` with the same
  skips, applied while loading (:func:`bitsandbytes_config`); needs ``pip install bitsandbytes``.
  Not exercised on the CPU-only machines this SDK is tested on.

``benchmarks/bench_int8.py`` reports the memory saved and the agreement with float32 (logit
error, greedy-token agreement) on a fixed prompt set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config_view import SKIPPED, skipped_module  # the list int8 keeps (the planner reads it without torch)
from .errors import ConfigError, MissingDependencyError

__all__ = ["QUANTIZE_MODES", "QuantizationReport", "quantize_model", "bitsandbytes_config", "skipped_module"]

QUANTIZE_MODES: tuple[str, ...] = ("int8",)


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` did.

    Attributes:
        mode: ``int8``.
        backend: ``torch-dynamic`` (CPU) or ``bitsandbytes`` (CUDA).
        quantized: names of the modules now in int8.
        kept: names of the linear layers deliberately kept in their dtype.
        bytes_before, bytes_after: parameter + buffer bytes of the whole model (packed int8
            weights included).
    """

    mode: str
    backend: str
    quantized: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.bytes_after / self.bytes_before if self.bytes_before else 0.0

    def summary(self) -> str:
        return (f"int8 ({self.backend}): {len(self.quantized)} linear layers quantized, {len(self.kept)} kept "
                f"(Mamba, vision, projector, lm_head); weights {self.bytes_before / 2**20:.1f} MiB -> "
                f"{self.bytes_after / 2**20:.1f} MiB ({self.saved_fraction:.0%} saved)")


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter, buffer and packed quantized weight of ``model``."""
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    total += sum(t.numel() * t.element_size() for t in model.buffers())
    for module in model.modules():
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None
                                                               else 0)
    return total


def quantize_model(model: nn.Module, mode: str = "int8") -> QuantizationReport:
    """Quantize ``model`` (a LongLLaVA model on CPU) in place; see the module docstring.

    Raises:
        ConfigError: unknown ``mode``, or a model on a GPU (use :func:`bitsandbytes_config`
            when loading instead).
    """
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantize mode {mode!r}; supported: {', '.join(QUANTIZE_MODES)}")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ConfigError("int8 on a GPU is bitsandbytes LLM.int8, applied while loading: "
                          "Pipeline.from_pretrained(..., quantize='int8') does that")
    language_model = model.language_model
    report = QuantizationReport(mode, "torch-dynamic", bytes_before=model_bytes(model))
    targets: set[str] = set()
    for name, module in language_model.named_modules():
        if isinstance(module, nn.Linear):
            full = f"language_model.{name}"
            (report.kept if skipped_module(full) else report.quantized).append(full)
            if not skipped_module(full):
                targets.add(name)
    if language_model.dtype != torch.float32:
        language_model.float()  # the CPU int8 kernels take float32 activations
    with warnings.catch_warnings():
        # torch 2.13 marks torch.ao.quantization and its quantized-tensor constructors deprecated
        # in favour of torchao: advice for torch's maintainers' users, not for a user of this SDK,
        # who cannot act on it. The declared range pins torch < 2.14 (docs/dependencies.md), and
        # tests/test_quantization.py fails when the API goes away.
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        # Per-output-channel weight scales: one scale per row keeps small rows from being rounded
        # to zero by a large row's range (several times less logit error than per-tensor).
        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        torch.ao.quantization.quantize_dynamic(language_model, {name: per_channel for name in targets},
                                               dtype=torch.qint8, inplace=True)
    report.bytes_after = model_bytes(model)
    model.config.quantization = {"mode": mode, "backend": report.backend}
    return report


def bitsandbytes_config() -> Any:
    """transformers' ``BitsAndBytesConfig`` for LLM.int8 with the SDK's skips (CUDA loading).

    Raises:
        MissingDependencyError: bitsandbytes is not installed.
    """
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # not installed, or installed without a usable CUDA build
        raise MissingDependencyError(None, "int8 on a GPU needs bitsandbytes: pip install bitsandbytes") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(SKIPPED))
