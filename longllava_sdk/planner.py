"""Memory planner: how much memory a prompt of N images needs, and how many images fit.

``longllava-sdk plan --preset 9b --images 1000 --gpu-memory 80GiB --quantize int8`` prints the
budget line by line for the hybrid and for an equal-size transformer (the same config with
every layer an attention layer), each with a one-shot prefill (the whole prompt in one
forward) and the SDK's chunked prefill, and the most images that fit.

The model counts the tensors the SDK's inference path holds at its peak, by layer kind
(``docs/planner.md`` lists each term and where it comes from):

* **weights**: every parameter of the model, counted from the config
  (:func:`~longllava_sdk.config_view.parameter_shapes`, equal to the model built on the
  ``meta`` device), in ``dtype``; with ``int8`` the linear layers
  :mod:`~longllava_sdk.quantization` quantizes take 1 byte per weight plus a per-row scale,
  the rest stays in the activation dtype;
* **KV cache**: attention layers only, ``2 x kv_heads x head_dim`` per token and layer,
  plus one layer's copy while a chunk is appended (the cache concatenates);
* **Mamba states**: ``d_inner x (d_conv + d_state)`` per Mamba layer, independent of length;
* **vision**: one ``vision_chunk_size`` batch of images through CLIP (pixels, every hidden
  state -- the feature layer is picked from them -- the MLP, and on CPU the attention
  scores, which its SDPA math path materialises);
* **activations**: the tokens in flight (the prompt for one-shot, a chunk for chunked) times
  the largest per-token footprint of a layer: the residual stream (input embeddings,
  residual, sum, normed input: ``4 H``) plus, for a Mamba mixer, ``5 d_inner + 2 d_state``
  (the ``2 d_inner`` input projection, convolution, time step, scan output; one more
  ``d_inner`` for the CUDA scan's gated copy); for a dense MLP ``3 I``; for an MoE layer
  ``k (H + 4 I)`` (routed copies of the tokens, gate+up, activation, product); for image
  tokens of a one-shot prompt the feature assembly (``5 H``);
* **attention mask** (chunked only): the ``(C, S)`` mask of a chunk that continues the cache,
  boolean plus the float copy SDPA makes, bounded by ``chunked_prefill.MASK_BUDGET``;
* **token bookkeeping**: ids, masks and placeholder ranks of the whole prompt (int64);
* **runtime**: the process before the model (CPU: Python, torch, transformers, the SDK,
  measured; CUDA: the CUDA context and library workspaces, an assumption) plus, on CPU, the
  kernels' own memory (numba's compiled scan, thread arenas; measured).

On the tiny preset the predicted peak RSS is within 15% of the measured one at several
lengths, images and text, in both prefill modes (``tests/test_planner.py``).

The planner reads the config through :class:`~longllava_sdk.config_view.ConfigView` and
imports neither torch nor transformers: ``longllava-sdk plan`` answers in a fraction of the
time loading them takes (``longllava-sdk bench --suite startup``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config_view import ConfigView, TextView, parameter_shapes, skipped_module
from .context_limit import max_images_for
from .errors import ConfigError
from .options import LoadOptions, reject_unknown, take_options
from .prefill_sizes import DEFAULT_PREFILL_CHUNK, MASK_BUDGET, MIN_CHUNK, effective_chunk
from .units import GiB, MiB, parse_size

if TYPE_CHECKING:
    from .config import LongLLaVAConfig

__all__ = ["MemoryPlan", "PlanColumn", "BudgetLine", "Architecture", "RequestCost", "plan", "plan_memory",
           "format_plan", "parse_memory",
           "PLAN_DTYPES", "CPU_RUNTIME_BYTES", "CPU_KERNEL_BYTES", "CUDA_RUNTIME_BYTES"]

#: ``--dtype`` choices: the weights' storage; activations are bf16 / fp16 / fp32 (int8: bf16
#: on CUDA, fp32 on CPU, where the int8 kernels take float32 activations).
PLAN_DTYPES = ("fp32", "bf16", "fp16", "int8")
#: RSS of a process with Python 3.11, torch 2.13 (CPU), transformers 5.24 and the SDK imported
#: (measured on the project's machine; the tiny model itself adds ~10 MB).
CPU_RUNTIME_BYTES = 440 * MiB
#: Memory the CPU kernels take besides tensors on the first forward: numba's compiled scan
#: kernels (LLVM), OpenMP / oneDNN arenas. Measured: 80-150 MB over the tensors' peak.
CPU_KERNEL_BYTES = 120 * MiB
#: The CUDA context, cuBLAS / cuDNN workspaces and the caching allocator's slack: an assumption
#: (typically 0.6-1.2 GB), not measured here (the project's machines have no GPU).
CUDA_RUNTIME_BYTES = 1 * GiB
#: Bytes per token the prompt's bookkeeping holds for the whole prefill: input ids, attention
#: mask and placeholder ranks (int64), the image mask (bool).
TOKEN_BOOKKEEPING_BYTES = 8 + 8 + 8 + 1
def parse_memory(text: str | int | float) -> int:
    """``"80GiB"`` / ``"80GB"`` (10^9 bytes) / ``"24g"`` / ``"512MiB"`` / ``80`` (GiB) -> bytes.

    One rule for sizes everywhere (:func:`longllava_sdk.units.parse_size`): GB is 10^9 bytes,
    GiB 2^30. GPUs are sold in binary units (an "80GB" A100 has 80 GiB): say ``80GiB``.
    """
    try:
        return parse_size(text, default_unit="gib", what="memory", example="80GB, 24GiB or 512MiB")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _machine_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ConfigError("cannot read this machine's memory (/proc/meminfo); pass --gpu-memory")


@dataclass(frozen=True)
class BudgetLine:
    """One line of a budget: ``name``, ``bytes``, what it counts, and when it is held.

    ``phase``: ``""`` for memory held through the whole prefill; ``"vision"`` for the
    transients of encoding images (CLIP) and ``"backbone"`` for those of running the layers.
    The two phases alternate; see :func:`_peak` for how they combine.
    """

    name: str
    bytes: int
    detail: str = ""
    phase: str = ""


@dataclass(frozen=True)
class Architecture:
    """The sizes the budget needs, read from a config (hybrid) or its all-attention twin."""

    name: str
    hidden: int
    intermediate: int
    vocab: int
    attention_layers: int
    mamba_layers: int
    dense_layers: int
    moe_layers: int
    experts_per_token: int
    kv_heads: int
    head_dim: int
    d_inner: int
    d_state: int
    d_conv: int
    parameters: dict[str, int]  # category -> count
    quantizable: int  # weights int8 would quantize

    @classmethod
    def from_text_config(cls, name: str, text: Any, parameters: dict[str, int], quantizable: int) -> "Architecture":
        kinds = list(text.layers_block_type)
        ffn = [(text.num_experts > 1 and i % text.expert_layer_period == text.expert_layer_offset)
               for i in range(text.num_hidden_layers)]
        return cls(
            name=name, hidden=text.hidden_size, intermediate=text.intermediate_size, vocab=text.vocab_size,
            attention_layers=kinds.count("attention"), mamba_layers=kinds.count("mamba"),
            dense_layers=ffn.count(False), moe_layers=ffn.count(True),
            experts_per_token=text.num_experts_per_tok if any(ffn) else 1,
            kv_heads=text.num_key_value_heads, head_dim=text.hidden_size // text.num_attention_heads,
            d_inner=text.mamba_expand * text.hidden_size, d_state=text.mamba_d_state, d_conv=text.mamba_d_conv,
            parameters=parameters, quantizable=quantizable,
        )

    def describe(self) -> str:
        ffn = (f"{self.moe_layers} MoE (top-{self.experts_per_token}) + {self.dense_layers} dense MLP"
               if self.moe_layers else "dense MLP")
        layers = self.attention_layers + self.mamba_layers
        return (f"{layers} layers: {self.attention_layers} attention + {self.mamba_layers} Mamba, {ffn}; "
                f"{_count(sum(self.parameters.values()))} parameters")


@dataclass
class PlanColumn:
    """The budget of one architecture with one prefill mode."""

    architecture: str
    mode: str  # "one-shot" | "chunked"
    chunk: int | None
    lines: list[BudgetLine]
    max_images: int  # by memory alone (the context limit is the plan's ``context_max_images``)

    @property
    def total(self) -> int:
        """The peak: what is held throughout plus the transient phases (see :func:`_peak`)."""
        return _peak(self.lines, self.mode == "one-shot")


@dataclass
class MemoryPlan:
    """What :func:`plan_memory` returns: the workload, the device, and one column per (architecture, mode)."""

    model: str
    device: str
    memory: int
    weight_dtype: str
    activation_dtype: str
    images: int
    text_tokens: int
    tokens_per_image: int
    tag_tokens_per_image: int
    tokens: int
    context_limit: int
    context_max_images: int
    hybrid: Architecture
    transformer: Architecture
    columns: list[PlanColumn] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def column(self, architecture: str, mode: str) -> PlanColumn:
        for col in self.columns:
            if col.architecture == architecture and col.mode == mode:
                return col
        raise KeyError((architecture, mode))


def _peak(lines: list[BudgetLine], one_shot: bool) -> int:
    """Held memory plus the transients of the vision and backbone phases.

    Memory a phase frees stays with the allocator (glibc's heap, CUDA's caching allocator)
    and is reused for later allocations that fit in it: a chunked prefill's chunk-sized
    tensors do, so its peak counts the larger phase; a one-shot prefill's prompt-sized
    tensors do not, so its two phases add up. (Measured on CPU: summing the phases of a
    chunked prefill over-predicts its peak by ~15%, taking the larger one of a one-shot
    under-predicts by ~12%.)
    """
    held = sum(line.bytes for line in lines if not line.phase)
    vision, backbone = (sum(line.bytes for line in lines if line.phase == phase) for phase in ("vision", "backbone"))
    return held + (vision + backbone if one_shot else max(vision, backbone))


# -----------------------------------------------------------------------------------------
# Parameters: counted from the config
# -----------------------------------------------------------------------------------------


def _category(name: str) -> str:
    if name.startswith("vision_tower"):
        return "vision tower"
    if name.startswith("projector"):
        return "projector"
    if "embed_tokens" in name or "lm_head" in name:
        return "embeddings + lm_head"
    if ".mamba." in name:
        return "Mamba mixers"
    if ".self_attn." in name:
        return "attention"
    if ".feed_forward." in name:
        return "MLP / experts"
    return "norms"


def _count_parameters(config: ConfigView, text: TextView, lm_only: bool = False) -> tuple[dict[str, int], int]:
    """Parameters by category, and how many sit in linear layers int8 quantizes."""
    shapes, linears = parameter_shapes(config, text=text, language_model_only=lm_only)
    counts: dict[str, int] = {}
    for name, shape in shapes.items():
        counts[_category(name)] = counts.get(_category(name), 0) + math.prod(shape)
    quantizable = sum(math.prod(shapes[name]) for name in linears
                      if name.startswith("language_model.") and not skipped_module(name[: -len(".weight")]))
    return counts, quantizable


def architectures(config: "ConfigView | LongLLaVAConfig") -> tuple[Architecture, Architecture]:
    """The hybrid of ``config`` and its equal-size all-attention transformer, counted from the config."""
    config = ConfigView.of(config)
    counts, quantizable = _count_parameters(config, config.text_config)
    hybrid = Architecture.from_text_config("hybrid", config.text_config, counts, quantizable)
    twin_text = config.text_config.all_attention()
    twin_counts, twin_quantizable = _count_parameters(config, twin_text, lm_only=True)
    for key in ("vision tower", "projector"):  # same vision path
        twin_counts[key] = counts.get(key, 0)
    transformer = Architecture.from_text_config("transformer", twin_text, twin_counts, twin_quantizable)
    return hybrid, transformer


# -----------------------------------------------------------------------------------------
# The budget
# -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    config: ConfigView
    device: str  # "cuda" | "cpu"
    weight_dtype: str
    act_bytes: int
    pixel_bytes: int
    runtime: int
    tokens_per_image: int
    tag_tokens: int
    text_tokens: int
    chunk: int
    mask_budget: int
    chunks: _ChunkSchedule  # (largest chunk, largest mask) by prompt length
    vision_batch: int  # images per CLIP batch; 0: every image of the prompt at once


def _weights(arch: Architecture, s: _Setting) -> list[BudgetLine]:
    params = dict(arch.parameters)
    total = sum(params.values())
    if s.weight_dtype == "int8":
        kept = total - arch.quantizable
        # one int8 byte per weight plus a float32 scale per output row (~ per hidden-size row)
        int8 = arch.quantizable + 4 * arch.quantizable // max(1, arch.hidden)
        return [BudgetLine("weights, int8 linear layers", int8,
                           f"{_count(arch.quantizable)} weights: attention, dense MLPs, routers"),
                BudgetLine(f"weights kept in {'fp32' if s.act_bytes == 4 else 'bf16'}", kept * s.act_bytes,
                           f"{_count(kept)}: Mamba, experts, vision, projector, embeddings, lm_head")]
    return [BudgetLine("weights", total * s.act_bytes,
                       ", ".join(f"{k} {_count(v)}" for k, v in sorted(params.items(), key=lambda kv: -kv[1])
                                 if v))]


def _per_token_activation(arch: Architecture, s: _Setting, image_fraction: float, one_shot: bool) -> tuple[int, str]:
    """Elements per token in flight at the largest layer, and which layer that is."""
    h, inner = arch.hidden, arch.d_inner
    residual = 4 * h  # input embeddings, residual, residual sum, normed layer input
    scan_outputs = 2 if s.device == "cuda" else 1  # the CUDA scan also returns its gated copy
    candidates = {"attention": 3 * h + 2 * arch.kv_heads * arch.head_dim}
    if arch.mamba_layers:
        candidates["Mamba mixer"] = (4 + scan_outputs) * inner + 2 * arch.d_state
    if arch.dense_layers:
        candidates["dense MLP"] = 3 * arch.intermediate
    if arch.moe_layers:
        candidates["MoE layer"] = arch.experts_per_token * (h + 4 * arch.intermediate)
    name = max(candidates, key=candidates.get)
    peak = residual + candidates[name]
    if one_shot and image_fraction:
        # image features assembled into the prompt's embeddings before the first layer
        assembly = 5 * h
        if assembly * image_fraction > peak:
            return int(assembly * image_fraction), "feature assembly"
    return peak, name


class _ChunkSchedule:
    """Where each chunk of a chunked prefill starts and how long it is, for any prompt length.

    A chunk's length depends only on the tokens before it (:func:`effective_chunk`), so every
    prompt's chunks are a prefix of one schedule, the last chunk cut at the prompt's end. The
    lengths shrink as the cache grows until they reach a floor (``MIN_CHUNK``, or the chunk
    size itself when it is that small or there is no mask budget) and stay there. The head
    (lengths above the floor, a few hundred chunks) is built once with running maxima and
    looked up by bisection; the tail of equal chunks is arithmetic, so the planner's search
    over prompts of up to billions of tokens costs neither time nor memory.
    """

    def __init__(self, chunk: int, mask_budget: int | None) -> None:
        self.chunk, self.mask_budget = chunk, mask_budget
        self.floor = chunk if mask_budget is None or chunk <= MIN_CHUNK else MIN_CHUNK
        self.starts: list[int] = []  # the head: chunks longer than the floor
        self.largest: list[int] = []  # the largest chunk among chunks 0..i
        self.mask: list[int] = []  # the largest (C, cached + C) mask among chunks 0..i
        self.end = 0  # where the head ends
        self.tail: int | None = None  # where the chunks of floor length start, once reached

    def _extend(self, tokens: int) -> None:
        while self.end < tokens and self.tail is None:
            size = effective_chunk(self.chunk, self.end, self.mask_budget)
            if size <= self.floor:  # non-increasing in the cache length: floor-length from here on
                self.tail = self.end
                break
            self.starts.append(self.end)
            self.largest.append(max(size, self.largest[-1] if self.largest else 0))
            # the first chunk has no cache to offset: SDPA runs causal, no mask
            self.mask.append(max(size * (self.end + size) if self.end else 0, self.mask[-1] if self.mask else 0))
            self.end += size

    def __call__(self, tokens: int) -> tuple[int, int]:
        """(largest chunk, largest ``chunk x (cached + chunk)`` mask) of a chunked prefill of ``tokens``."""
        if tokens <= 0:
            return 0, 0
        self._extend(tokens)
        c = self.floor
        if self.tail is None or tokens <= self.tail:
            last = bisect.bisect_left(self.starts, tokens) - 1  # the chunk holding the last token
            start, before = self.starts[last], last - 1
            size = min(tokens - start, effective_chunk(self.chunk, start, self.mask_budget))  # cut at the end
            full = 0
        else:
            full = (tokens - 1 - self.tail) // c  # whole floor-length chunks before the last one
            start, before = self.tail + full * c, len(self.starts) - 1
            size = tokens - start
        largest = max(size, c if full else 0, self.largest[before] if before >= 0 else 0)
        # the masks grow with the cache: of the tail's whole chunks, the last one's is the largest
        tail_mask = c * start if full and start - c > 0 else 0
        mask = max(size * (start + size) if start else 0, tail_mask, self.mask[before] if before >= 0 else 0)
        return largest, mask


def _vision(s: _Setting, images: int) -> int:
    vc = s.config.vision_config
    batch = min(images, s.vision_batch) if s.vision_batch else images
    seq = s.config.num_patches + 1
    pixels = batch * 3 * vc.image_size**2 * s.pixel_bytes
    hidden_states = (vc.num_hidden_layers + 1) * batch * seq * vc.hidden_size * s.act_bytes
    mlp = batch * seq * vc.intermediate_size * s.act_bytes
    scores = 2 * batch * vc.num_attention_heads * seq * seq * s.act_bytes if s.device == "cpu" else 0
    return pixels + hidden_states + mlp + scores


def _budget(arch: Architecture, s: _Setting, images: int, mode: str) -> list[BudgetLine]:
    tokens = s.text_tokens + images * (s.tokens_per_image + s.tag_tokens)
    kv_per_token_layer = 2 * arch.kv_heads * arch.head_dim * s.act_bytes
    kv = arch.attention_layers * kv_per_token_layer * tokens
    one_shot = mode == "one-shot"
    if one_shot:
        in_flight, mask, kv_copy = tokens, 0, 0
    else:
        in_flight, mask = s.chunks(tokens)
        kv_copy = kv_per_token_layer * tokens if arch.attention_layers and tokens > in_flight else 0
    image_fraction = images * s.tokens_per_image / max(1, tokens)
    per_token, layer = _per_token_activation(arch, s, image_fraction, one_shot)
    mamba_states = arch.mamba_layers * arch.d_inner * (arch.d_conv + arch.d_state) * s.act_bytes
    runtime_detail = ("Python, torch, transformers, the SDK (measured)" if s.device == "cpu"
                      else "CUDA context, library workspaces, allocator slack (assumed)")
    lines = [BudgetLine("runtime", s.runtime, runtime_detail)]
    if s.device == "cpu":
        lines.append(BudgetLine("CPU kernels", CPU_KERNEL_BYTES, "numba's compiled scan, thread arenas (measured)"))
    lines += _weights(arch, s)
    lines += [
        BudgetLine("KV cache", kv + kv_copy,
                   f"{arch.attention_layers} attention layer(s) x {kv_per_token_layer:,} B/token x {tokens:,} tokens"
                   + (" + one layer's copy while appending" if kv_copy else "")),
        BudgetLine("Mamba conv + SSM states", mamba_states,
                   f"{arch.mamba_layers} layers x {arch.d_inner} x ({arch.d_conv} + {arch.d_state}), any length"),
        BudgetLine("vision encoding", _vision(s, images),
                   (f"{min(images, s.vision_batch or images)} images at a time through CLIP") if images
                   else "no images", phase="vision"),
        BudgetLine("activations", per_token * s.act_bytes * in_flight,
                   f"{in_flight:,} tokens in flight x {per_token * s.act_bytes / 1024:.1f} KB ({layer})",
                   phase="backbone"),
        BudgetLine("attention mask", mask * (1 + s.act_bytes),
                   f"({mask:,} elements: bool + SDPA's float copy)" if mask else "none (causal, no offset)",
                   phase="backbone"),
        BudgetLine("token bookkeeping", TOKEN_BOOKKEEPING_BYTES * tokens, "ids, masks, placeholder ranks"),
        BudgetLine("logits (last position)", arch.vocab * 4, ""),
    ]
    return lines


#: The planner's search stops here (16.7M images): beyond it, "fits" is the answer.
_SEARCH_LIMIT = 1 << 24


def _max_images(arch: Architecture, s: _Setting, mode: str, memory: int) -> int:
    """The most images whose budget fits ``memory`` (binary search; the budget grows with images)."""
    def fits(n: int) -> bool:
        return _peak(_budget(arch, s, n, mode), mode == "one-shot") <= memory

    if not fits(0):
        return 0
    low, high = 0, 1
    while high < _SEARCH_LIMIT and fits(high):
        low, high = high, high * 2
    if high >= _SEARCH_LIMIT and fits(_SEARCH_LIMIT):
        return _SEARCH_LIMIT
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def plan_memory(
    config: "ConfigView | LongLLaVAConfig",
    *,
    images: int,
    gpu_memory: str | int | None = None,
    device: str = "cuda",
    dtype: str = "bf16",
    text_tokens: int = 512,
    tokens_per_image: int | None = None,
    tag_tokens_per_image: int | None = None,
    prefill_chunk: int | None = None,
    vision_batch: int | None = None,
    runtime_bytes: int | None = None,
    model_name: str = "",
) -> MemoryPlan:
    """The memory budget of ``images`` images (+ ``text_tokens``) and the most images that fit.

    Args:
        config: the model's config (a preset's or a model folder's), as a
            :class:`~longllava_sdk.config_view.ConfigView` or a ``LongLLaVAConfig``.
        images: images in the prompt (video frames, slices, tiles count one each).
        gpu_memory: the device's memory ("80GiB", "24GiB", GiB as a number); default on CPU:
            this machine's RAM.
        device: ``cuda`` or ``cpu`` (kernels and runtime differ).
        dtype: weight storage, one of :data:`PLAN_DTYPES`; ``int8`` quantizes what
            :mod:`~longllava_sdk.quantization` quantizes, activations stay bf16 (fp32 on CPU).
        text_tokens: the prompt's text with the chat template.
        tokens_per_image: LLM tokens per image (default: the config's, 144).
        tag_tokens_per_image: tag tokens around each image (``<img></img>``, ``<t>``); default
            counted with the SDK's tokenizer.
        prefill_chunk: tokens per chunk of the chunked prefill (default: the config's).
        vision_batch: images per CLIP batch (default: the config's ``vision_chunk_size``; ``0``:
            every image at once, as the official code encodes them).
        runtime_bytes: the runtime line (default: :data:`CPU_RUNTIME_BYTES` /
            :data:`CUDA_RUNTIME_BYTES`).

    Returns:
        A :class:`MemoryPlan` with four columns: hybrid / transformer x one-shot / chunked.
    """
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"device must be cuda or cpu, got {device!r}")
    if dtype not in PLAN_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(PLAN_DTYPES)}, got {dtype!r}")
    if images < 0 or text_tokens < 0:
        raise ConfigError("images and text tokens must be >= 0")
    memory = parse_memory(gpu_memory) if gpu_memory is not None else (
        _machine_memory() if device == "cpu" else None)
    if memory is None:
        raise ConfigError("a CUDA plan needs the GPU's memory: pass --gpu-memory (e.g. 80GiB)")
    setting = _setting(config, device=device, dtype=dtype, text_tokens=text_tokens, tokens_per_image=tokens_per_image,
                       tag_tokens_per_image=tag_tokens_per_image, prefill_chunk=prefill_chunk,
                       vision_batch=vision_batch, runtime_bytes=runtime_bytes)
    config, act, tpi = setting.config, setting.act_bytes, setting.tokens_per_image
    tag_tokens_per_image = setting.tag_tokens
    chunk = setting.chunk
    hybrid, transformer = architectures(config)
    tokens = int(text_tokens) + images * (tpi + int(tag_tokens_per_image))
    # max_images_for counts placeholders only; the tags around each image take context too
    context_images = min(max_images_for(config, text_tokens),
                         max(0, (int(config.max_context) - int(text_tokens)) // (tpi + int(tag_tokens_per_image))))
    plan = MemoryPlan(model=model_name, device=device, memory=memory, weight_dtype=dtype,
                      activation_dtype={4: "fp32", 2: "bf16"}[act], images=images, text_tokens=int(text_tokens),
                      tokens_per_image=tpi, tag_tokens_per_image=int(tag_tokens_per_image), tokens=tokens,
                      context_limit=int(config.max_context), context_max_images=context_images,
                      hybrid=hybrid, transformer=transformer)
    for arch in (hybrid, transformer):
        for mode in ("one-shot", "chunked"):
            plan.columns.append(PlanColumn(arch.name, mode, None if mode == "one-shot" else chunk,
                                           _budget(arch, setting, images, mode),
                                           _max_images(arch, setting, mode, memory)))
    plan.notes = _notes(plan, dtype)
    return plan


def _setting(config: "ConfigView | LongLLaVAConfig", *, device: str, dtype: str, text_tokens: int = 0,
             tokens_per_image: int | None = None, tag_tokens_per_image: int | None = None,
             prefill_chunk: int | None = None, vision_batch: int | None = None,
             runtime_bytes: int | None = None) -> _Setting:
    if dtype == "fp32":
        act = 4
    elif dtype == "int8":
        act = 4 if device == "cpu" else 2
    else:
        act = 2
    config = ConfigView.of(config)
    tpi = int(tokens_per_image or config.tokens_per_image)
    if tpi != config.tokens_per_image:
        config = config.with_(tokens_per_image=tpi)
    if tag_tokens_per_image is None:
        tag_tokens_per_image = _tag_tokens(config)
    chunk = int(prefill_chunk or config.chunked_prefill_size or DEFAULT_PREFILL_CHUNK)
    if chunk < 1:
        raise ConfigError(f"prefill chunk must be >= 1, got {chunk}")
    if vision_batch is not None and vision_batch < 0:
        raise ConfigError(f"vision batch must be >= 0 (0: all images at once), got {vision_batch}")
    return _Setting(config=config, device=device, weight_dtype=dtype, act_bytes=act,
                    pixel_bytes=4,  # the processor's pixel tensors are float32
                    runtime=int(runtime_bytes if runtime_bytes is not None else (
                        CPU_RUNTIME_BYTES if device == "cpu" else CUDA_RUNTIME_BYTES)),
                    tokens_per_image=tpi, tag_tokens=int(tag_tokens_per_image), text_tokens=int(text_tokens),
                    chunk=chunk, mask_budget=MASK_BUDGET, chunks=_ChunkSchedule(chunk, MASK_BUDGET),
                    vision_batch=int(config.vision_chunk_size if vision_batch is None else vision_batch))


#: Budget lines of the loaded model itself (in an idle server's memory already), not of a request.
_MODEL_LINES = ("runtime", "CPU kernels", "weights")


class RequestCost:
    """The planned peak memory one request adds to a loaded model, in the planner's terms.

    The budget of :func:`plan_memory` (hybrid, chunked prefill) without the lines the idle
    model already holds (runtime, kernels, weights): KV cache, Mamba states, one vision
    batch through CLIP, the activations of a prefill chunk, its mask, token bookkeeping,
    logits. The server admits requests by it (docs/serving.md). The architecture is counted
    once, from the config.

    Args:
        config: the served model's config.
        device: ``cpu`` or ``cuda``.
        dtype: the weights' storage (one of :data:`PLAN_DTYPES`).
    """

    def __init__(self, config: "ConfigView | LongLLaVAConfig", *, device: str = "cpu", dtype: str = "fp32") -> None:
        self.setting = _setting(config, device=device, dtype=dtype)
        self.architecture, _ = architectures(self.setting.config)

    def lines(self, *, images: int, text_tokens: int) -> list[BudgetLine]:
        """The request's budget lines for ``images`` images and ``text_tokens`` (prompt + answer)."""
        s = dataclasses.replace(self.setting, text_tokens=int(text_tokens))
        return [line for line in _budget(self.architecture, s, int(images), "chunked")
                if not line.name.startswith(_MODEL_LINES)]

    def peak(self, *, images: int, text_tokens: int) -> int:
        """Bytes the request holds at its peak (held lines plus the larger transient phase)."""
        return _peak(self.lines(images=images, text_tokens=text_tokens), one_shot=False)


def _notes(plan: MemoryPlan, dtype: str) -> list[str]:
    notes = []
    experts = plan.hybrid.parameters.get("MLP / experts", 0) if plan.hybrid.moe_layers else 0
    if dtype == "int8" and experts:
        notes.append(f"int8 leaves the {_count(experts)} MoE parameters in 16 bits: transformers stores the experts "
                     "as 3-D tensors, and both torch's dynamic quantization and transformers' bitsandbytes "
                     "integration replace nn.Linear layers only")
    if any(c.max_images == 0 for c in plan.columns):
        for col in plan.columns:
            if col.max_images == 0:
                weights = sum(line.bytes for line in col.lines if line.name.startswith("weights"))
                notes.append(f"{col.architecture} {col.mode}: not even the text alone fits; the weights take "
                             f"{_gb(weights)} of {_gb(plan.memory)}")
    chunked = plan.column("hybrid", "chunked").max_images
    if chunked > plan.context_max_images:
        notes.append(f"memory would allow {chunked:,} images with chunked prefill, past the context limit of "
                     f"{plan.context_max_images:,}: config.max_context (at most "
                     f"text_config.max_position_embeddings) sets how long a prompt the model accepts")
    return notes


def _tokens_of(text: str) -> int:
    """Tokens ``text`` takes with the SDK's tokenizer (the one model folders it creates carry).

    Counted with the trained BPE itself (``tokenizers``): the transformers wrapper around it
    gives the same ids (``tests/test_planner.py``) but would load torch.
    """
    from .processing.tokenizer import build_bpe

    return len(build_bpe().encode(text, add_special_tokens=False).ids)


def _tag_tokens(config: ConfigView) -> int:
    """Tokens of the tags around one image (``<img>``, ``</img>``)."""
    from .processing.protocol import IMAGE, IMAGE_PLACEHOLDER

    return _tokens_of(IMAGE.replace(IMAGE_PLACEHOLDER, ""))


#: What ``plan`` plans for unless told: a CUDA device, weights in bf16.
PLAN_LOAD = LoadOptions(device="cuda")
_SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def plan(
    *,
    preset: str = "9b",
    model: str | None = None,
    images: int = 0,
    video_frames: int = 0,
    gpu_memory: str | None = None,
    load: LoadOptions = PLAN_LOAD,
    text_tokens: int = 512,
    tokens_per_image: int | None = None,
    prefill_chunk: int | None = None,
    vision_batch: int | None = None,
    **fields: Any,
) -> MemoryPlan:
    """Plan the memory of a long prompt: budget line by line, and how many images fit.

    Args:
        preset: model size to plan for (tiny, 9b, a13b); ignored with --model.
        model: a model folder whose config.json to plan for instead of a preset.
        images: images in the prompt (volume slices and GeoTIFF tiles count one each).
        video_frames: video frames in the prompt (images plus the <t> between frames).
        gpu_memory: the GPU's memory, e.g. 80GiB or 24GiB (GB means 10^9 bytes, GiB 2^30);
            with --device cpu the RAM to plan for (default: this machine's).
        load: the device (cuda, the default, or cpu), the dtype (default: bf16 on cuda, fp32
            on cpu) and --quantize int8 (the SDK's int8: Mamba, vision and embeddings kept in
            16 bits) to plan for, as a model would be loaded with them.
        text_tokens: tokens of the question and chat template.
        tokens_per_image: LLM tokens per image (default: the model's, 144).
        prefill_chunk: tokens per chunk of the chunked prefill (default: the model's, 2048).
        vision_batch: images per CLIP batch (default: the model's vision_chunk_size, 16; 0: all
            images at once, as the official code encodes them).
        fields: :class:`~longllava_sdk.options.LoadOptions` fields by name (``dtype="bf16"``,
            ``quantize="int8"``, ``device="cpu"``).
    """
    load = take_options(fields, LoadOptions, load)
    reject_unknown(fields, "plan")
    device = "cuda" if load.device == "auto" or load.device.startswith("cuda") else load.device
    dtype = "int8" if load.quantize else _SHORT_DTYPES[load.dtype or ("float32" if device == "cpu" else "bfloat16")]
    from .processing.protocol import FRAME_SEPARATOR, VIDEO_END, VIDEO_START

    if model is not None:
        config = ConfigView.from_folder(model)
        name = str(model)
    else:
        config = ConfigView.from_preset(preset)
        name = f"preset {preset}"
    if images < 0 or video_frames < 0:
        raise ConfigError("--images and --video-frames must be >= 0")
    extra_text = 0
    if video_frames:
        extra_text = (_tokens_of(VIDEO_START + VIDEO_END)
                      + (video_frames - 1) * _tokens_of(FRAME_SEPARATOR))
    return plan_memory(config, images=images + video_frames, gpu_memory=gpu_memory, device=device, dtype=dtype,
                       text_tokens=text_tokens + extra_text, tokens_per_image=tokens_per_image,
                       prefill_chunk=prefill_chunk, vision_batch=vision_batch, model_name=name)


def _count(n: float) -> str:
    """12.3K / 4.56M / 7.89B."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(int(n))


def _gb(value: int) -> str:
    return f"{value / GiB:.2f} GiB" if value >= GiB / 10 else f"{value / MiB:.1f} MiB"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as a table: one row per budget line, one column per (architecture, mode)."""
    cols = plan.columns
    heads = [f"{c.architecture} {c.mode}" + (f" ({c.chunk})" if c.chunk else "") for c in cols]
    names: list[str] = []
    for col in cols:
        for line in col.lines:
            if line.name not in names:
                names.append(line.name)
    width = max(len(n) for n in names + ["max images (memory)"]) + 2
    cell = max(len(h) for h in heads) + 2

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{width}}" + "".join(f"{c:>{cell}}" for c in cells)

    out = [
        f"{plan.model or 'model'}: hybrid {plan.hybrid.describe()}",
        f"  equal-size transformer: {plan.transformer.describe()}",
        f"{plan.device.upper()}, {_gb(plan.memory)}; weights {plan.weight_dtype}, activations {plan.activation_dtype}",
        f"prompt: {plan.images:,} images x ({plan.tokens_per_image} + {plan.tag_tokens_per_image} tag tokens) + "
        f"{plan.text_tokens:,} text = {plan.tokens:,} tokens",
        "",
        row("", heads),
    ]
    for name in names:
        values = [[line.bytes for line in col.lines if line.name == name] for col in cols]
        out.append(row(name, [_gb(v[0]) if v else "-" for v in values]))
    out.append(row("peak", [_gb(c.total) for c in cols]))
    out.append(row("fits?", [("yes" if c.total <= plan.memory else "NO") + f" ({100 * c.total / plan.memory:.0f}%)"
                             for c in cols]))
    out.append(row("max images (memory)", [(">= " if c.max_images >= _SEARCH_LIMIT else "") + f"{c.max_images:,}"
                                           for c in cols]))
    out.append(f"context limit: {plan.context_limit:,} tokens = {plan.context_max_images:,} images "
               "(config.max_context; longer prompts are refused)")
    out += [f"note: {note}" for note in plan.notes]
    hybrid = plan.column("hybrid", "one-shot")
    out += ["", "where the hybrid's memory goes (one-shot):"]
    out += [f"  {line.name:<{width}}{_gb(line.bytes):>12}  {line.detail}" for line in hybrid.lines if line.bytes]
    return "\n".join(out)
