"""``longllava-sdk convert-official``: a released LongLLaVA checkpoint -> the SDK's HF format.

The released checkpoints (``model_type: llava_jamba``) are LLaVA wrappers around AI21's
remote-code Jamba. Their weights use that code's names, which transformers 5 spells
differently::

    official (AI21 remote code + LLaVA)                    SDK (transformers 5)
    model.layers.{i}.pre_moe_layernorm                      language_model.model.layers.{i}.pre_ff_layernorm
    model.layers.{i}.mamba.B_layernorm / C_layernorm        ...mamba.b_layernorm / c_layernorm
    model.layers.{i}.moe.experts.{j}.gate_proj/up_proj      ...feed_forward.experts.gate_up_proj  (E, 2I, H)
    model.layers.{i}.moe.experts.{j}.down_proj              ...feed_forward.experts.down_proj     (E, H, I)
    model.layers.{i}.moe.router                             ...feed_forward.router
    model.layers.{i}.moe.experts.0.*  (1-expert layer)      ...feed_forward.{gate,up,down}_proj   (dense MLP)
    model.mm_projector.{0,2}                                projector.linear_{1,2}
    model.vision_tower.vision_tower.vision_model.*          vision_tower.*

(the full table is in ``docs/checkpoints.md``). The conversion is strict: every source
tensor is either mapped or dropped by a named rule, every SDK parameter is produced, and
every shape is checked against the model the config describes; anything else is a
:class:`CheckpointError` that lists the offending keys. Settings transformers 5 cannot
represent (``mamba_inner_layernorms: false``, anyres/unpad image merging, ...) are refused
rather than silently mis-modelled.

Memory: tensors are read one at a time (``safetensors.safe_open`` memory-maps the source)
and written in output shards of ``max_shard_size``, so converting the 53B A13B needs about
one shard plus one layer's fused experts of RAM, not twice the model.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint import PICKLE_SUFFIXES, atomic_directory, check_weights_safe
from .config import PRESETS, LongLLaVAConfig
from .errors import CheckpointError, ConfigError, option_hint
from .options import DTYPES
from .units import parse_size

OFFICIAL_MODEL_TYPE = "llava_jamba"
REPORT_FILE = "conversion_report.json"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
CLIP_NAMESPACE = "clip::"  # prefixes keys read from the separate ``vision_tower`` directory
MAX_LISTED = 40

# Defaults of AI21's remote-code JambaConfig: a key missing from an official config.json
# means what the official code would have used.
_OFFICIAL_TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", initializer_range=0.02,
    rms_norm_eps=1e-6, output_router_logits=False, router_aux_loss_coef=0.001, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, attention_dropout=0.0, num_experts_per_tok=2, num_experts=16,
    expert_layer_period=2, expert_layer_offset=1, attn_layer_period=8, attn_layer_offset=4,
    mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto", mamba_conv_bias=True,
    mamba_proj_bias=False,
)
_CLIP_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_channels", "image_size", "patch_size", "projection_dim", "hidden_act",
                       "layer_norm_eps", "attention_dropout", "initializer_range", "initializer_factor")
# OpenAI CLIP ViT-L/14 at 336 px under the names LongLLaVA's configs use for it
# ("openai/clip-vit-large-patch14-336", "./models/clip_vit_large_patch14_336").
_CLIP_L14_336_NAME = re.compile(r"vit[-_]?l(arge)?[-_/]?(patch)?14[-_]?336", re.IGNORECASE)


# ------------------------------------------------------------------------------------------
# Key mapping
# ------------------------------------------------------------------------------------------
LM = "language_model."
_TOP_LEVEL = {
    "model.embed_tokens.weight": LM + "model.embed_tokens.weight",
    "model.final_layernorm.weight": LM + "model.final_layernorm.weight",
    "lm_head.weight": LM + "lm_head.weight",
    "model.mm_projector.0.weight": "projector.linear_1.weight",
    "model.mm_projector.0.bias": "projector.linear_1.bias",
    "model.mm_projector.2.weight": "projector.linear_2.weight",
    "model.mm_projector.2.bias": "projector.linear_2.bias",
}
# Per-layer names (after ``model.layers.{i}.``): AI21 remote code and transformers-4 native
# Jamba spellings -> transformers 5.
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_moe_layernorm.weight": "pre_ff_layernorm.weight",
    "pre_ff_layernorm.weight": "pre_ff_layernorm.weight",
    **{f"self_attn.{p}_proj.weight": f"self_attn.{p}_proj.weight" for p in "qkvo"},
    **{f"mamba.{n}": f"mamba.{n}" for n in (
        "in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
        "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias", "dt_layernorm.weight")},
    "mamba.B_layernorm.weight": "mamba.b_layernorm.weight",
    "mamba.C_layernorm.weight": "mamba.c_layernorm.weight",
    "mamba.b_layernorm.weight": "mamba.b_layernorm.weight",
    "mamba.c_layernorm.weight": "mamba.c_layernorm.weight",
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_KEY = re.compile(r"^(?:moe|feed_forward)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_ROUTER_KEY = re.compile(r"^(?:moe|feed_forward)\.router\.weight$")
_DENSE_KEY = re.compile(r"^feed_forward\.(gate_proj|up_proj|down_proj)\.weight$")  # transformers-4 native
_VISION_KEY = re.compile(r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?(.+)$")
_CLIP_DIR_VISION_KEY = re.compile(r"^vision_model\.(.+)$")
_CLIP_DIR_UNUSED = re.compile(r"^(text_model\..+|text_projection\.weight|visual_projection\.weight|logit_scale)$")

RULE_POSITION_IDS = "CLIP position_ids buffer: transformers recomputes it (non-persistent), nothing is lost"
RULE_SINGLE_EXPERT_ROUTER = ("router of a 1-expert layer: softmax over a single logit is always 1, so the "
                             "router cannot change the output; transformers builds a dense MLP there")
RULE_CLIP_UNUSED = "CLIP text tower / projection heads: LongLLaVA uses only the vision hidden states"


@dataclass
class OutputTensor:
    """One tensor of the converted checkpoint and how it is built from source tensors.

    ``kind``: ``copy`` (one source), ``gate_up`` (sources ``g0, u0, g1, u1, ...`` ->
    ``(E, 2I, H)``, expert ``j`` = ``cat(gate_j, up_j)`` along dim 0, the order
    transformers' ``.chunk(2)`` splits into gate, up) or ``stack`` (``(E, H, I)``).
    """

    target: str
    kind: str
    sources: tuple[str, ...]


@dataclass
class ConversionPlan:
    outputs: list[OutputTensor] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> rule
    unmapped: dict[str, str] = field(default_factory=dict)  # source key -> why
    incomplete: dict[str, str] = field(default_factory=dict)  # expected source key -> why it is needed


def plan_conversion(keys: list[str], shapes: Callable[[str], tuple[int, ...]],
                    layers_num_experts: list[int]) -> ConversionPlan:
    """Map every source key to an SDK key, a named drop rule, or an ``unmapped`` reason.

    Args:
        keys: all source tensor names (keys of a separate CLIP directory prefixed with
            :data:`CLIP_NAMESPACE`).
        shapes: source key -> shape (read from file headers, no tensor data).
        layers_num_experts: experts of each language-model layer (``JambaConfig.layers_num_experts``).
    """
    plan = ConversionPlan()
    experts: dict[int, dict[int, dict[str, str]]] = {}  # layer -> expert -> proj -> key
    routers: dict[int, str] = {}
    for key in keys:
        if key in _TOP_LEVEL:
            plan.outputs.append(OutputTensor(_TOP_LEVEL[key], "copy", (key,)))
            continue
        if key.startswith(CLIP_NAMESPACE):
            name = key[len(CLIP_NAMESPACE):]
            if _CLIP_DIR_UNUSED.match(name):
                plan.dropped[key] = RULE_CLIP_UNUSED
            elif name == "vision_model.embeddings.position_ids":
                plan.dropped[key] = RULE_POSITION_IDS
            elif match := _CLIP_DIR_VISION_KEY.match(name):
                plan.outputs.append(OutputTensor("vision_tower." + match.group(1), "copy", (key,)))
            else:
                plan.unmapped[key] = "not a CLIP vision-tower weight"
            continue
        if match := _VISION_KEY.match(key):
            if match.group(1) == "embeddings.position_ids":
                plan.dropped[key] = RULE_POSITION_IDS
            else:
                plan.outputs.append(OutputTensor("vision_tower." + match.group(1), "copy", (key,)))
            continue
        match = _LAYER_KEY.match(key)
        if not match:
            plan.unmapped[key] = "no rule for this name"
            continue
        layer, rest = int(match.group(1)), match.group(2)
        if layer >= len(layers_num_experts):
            plan.unmapped[key] = f"layer {layer} does not exist (config has {len(layers_num_experts)} layers)"
            continue
        prefix = f"{LM}model.layers.{layer}."
        if rest in _LAYER_RENAMES:
            plan.outputs.append(OutputTensor(prefix + _LAYER_RENAMES[rest], "copy", (key,)))
        elif m := _EXPERT_KEY.match(rest):
            experts.setdefault(layer, {}).setdefault(int(m.group(1)), {})[m.group(2)] = key
        elif _ROUTER_KEY.match(rest):
            routers[layer] = key
        elif (m := _DENSE_KEY.match(rest)) and layers_num_experts[layer] == 1:
            plan.outputs.append(OutputTensor(f"{prefix}feed_forward.{m.group(1)}.weight", "copy", (key,)))
        else:
            plan.unmapped[key] = "no rule for this layer weight"

    for layer, key in routers.items():
        n_experts = layers_num_experts[layer]
        if n_experts > 1:
            plan.outputs.append(OutputTensor(f"{LM}model.layers.{layer}.feed_forward.router.weight", "copy", (key,)))
        elif shapes(key)[0] == 1:
            plan.dropped[key] = RULE_SINGLE_EXPERT_ROUTER
        else:
            plan.unmapped[key] = (f"router for {shapes(key)[0]} experts, but the config gives layer {layer} "
                                  "a single expert (check num_experts / expert_layer_period / expert_layer_offset)")
    for layer, by_expert in experts.items():
        _plan_layer_experts(plan, layer, by_expert, layers_num_experts[layer])
    return plan


def _plan_layer_experts(plan: ConversionPlan, layer: int, by_expert: dict[int, dict[str, str]],
                        n_experts: int) -> None:
    prefix = f"{LM}model.layers.{layer}.feed_forward."
    for j, projs in by_expert.items():
        if j >= n_experts:
            for key in projs.values():
                plan.unmapped[key] = f"expert {j}, but the config gives layer {layer} {n_experts} expert(s)"
    complete = all(len(by_expert.get(j, {})) == 3 for j in range(n_experts))
    if not complete:
        for j in range(n_experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                if proj not in by_expert.get(j, {}):
                    plan.incomplete[f"model.layers.{layer}.moe.experts.{j}.{proj}.weight"] = (
                        f"layer {layer} needs all {n_experts} expert(s) with gate/up/down projections")
        return
    if n_experts == 1:  # transformers builds a dense JambaMLP where a layer has one expert
        for proj, key in by_expert[0].items():
            plan.outputs.append(OutputTensor(f"{prefix}{proj}.weight", "copy", (key,)))
        return
    gate_up = tuple(k for j in range(n_experts) for k in (by_expert[j]["gate_proj"], by_expert[j]["up_proj"]))
    plan.outputs.append(OutputTensor(prefix + "experts.gate_up_proj", "gate_up", gate_up))
    down = tuple(by_expert[j]["down_proj"] for j in range(n_experts))
    plan.outputs.append(OutputTensor(prefix + "experts.down_proj", "stack", down))


def output_shape(out: OutputTensor, shapes: Callable[[str], tuple[int, ...]]) -> tuple[int, ...] | str:
    """Shape ``out`` will have, or a message when its sources do not fit together."""
    src = [tuple(shapes(k)) for k in out.sources]
    if out.kind == "copy":
        return src[0]
    if len(set(src)) != 1 or len(src[0]) != 2:
        return f"expert weights of different shapes {sorted(set(src))}"
    if out.kind == "gate_up":
        return (len(src) // 2, 2 * src[0][0], src[0][1])
    return (len(src), *src[0])


# ------------------------------------------------------------------------------------------
# Reading source weights
# ------------------------------------------------------------------------------------------
def _is_safetensors_file(name: str) -> bool:
    return name.endswith(".safetensors")


def _is_pickle_weights_file(name: str) -> bool:
    # Trainer output also holds pickles that are not weights (training_args.bin, optimizer.pt...).
    return name.endswith(PICKLE_SUFFIXES) and name.startswith(("pytorch_model", "model"))


class SourceWeights:
    """Tensor-by-tensor access to a checkpoint directory's weight files.

    safetensors files are memory-mapped and read one tensor at a time; pickle files
    (``.bin``) are only opened when ``allow_pickle`` is true, with ``torch.load(...,
    weights_only=True, mmap=True)``.
    """

    def __init__(self, directory: Path, allow_pickle: bool = False, namespace: str = "") -> None:
        self.directory = directory
        self.namespace = namespace
        self.is_safetensors = check_weights_safe(directory, allow_pickle=allow_pickle)
        self._files: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        files = self._weight_files(SAFE_INDEX if self.is_safetensors else PICKLE_INDEX)
        if not files:
            raise CheckpointError(f"{directory}: no model weight files (model*.safetensors / pytorch_model*.bin)")
        for path in files:
            for key in self._keys_of(path):
                name = namespace + key
                if name in self._files:
                    raise CheckpointError(f"{path}: tensor {key!r} also stored in {self._files[name].name}")
                self._files[name] = path

    def _weight_files(self, index_name: str) -> list[Path]:
        index = self.directory / index_name
        is_weights = _is_safetensors_file if self.is_safetensors else _is_pickle_weights_file
        present = sorted(p for p in self.directory.iterdir() if p.is_file() and is_weights(p.name))
        if not index.exists():
            return present
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a weight index ({exc})") from exc
        listed = sorted({self.directory / name for name in weight_map.values()})
        missing = [p.name for p in listed if not p.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists missing shard(s) {', '.join(missing[:5])}")
        stray = [p.name for p in present if p not in listed]
        if stray:
            raise CheckpointError(f"{self.directory}: weight file(s) {', '.join(stray[:5])} are not in {index_name}; "
                                  "remove them or add them to the index, so that no weights are silently skipped")
        return listed

    def _keys_of(self, path: Path) -> list[str]:
        if self.is_safetensors:
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
            self._handles[path] = handle
            return list(handle.keys())
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickle format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be loaded as a weights-only pickle ({exc})") from exc
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a flat state dict of tensors")
        self._pickled[path] = state
        return list(state)

    def keys(self) -> list[str]:
        return list(self._files)

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def file_of(self, key: str) -> Path:
        return self._files[key]

    def shape(self, key: str) -> tuple[int, ...]:
        path, name = self._files[key], key[len(self.namespace):]
        if self.is_safetensors:
            return tuple(self._handles[path].get_slice(name).get_shape())
        return tuple(self._pickled[path][name].shape)

    def load(self, key: str) -> torch.Tensor:
        path, name = self._files[key], key[len(self.namespace):]
        if self.is_safetensors:
            return self._handles[path].get_tensor(name)
        return self._pickled[path][name].clone()  # own storage: no mmap / shared-storage views


class CombinedSources:
    """The checkpoint's weights plus, optionally, a separate CLIP directory's (namespaced)."""

    def __init__(self, *sources: SourceWeights) -> None:
        self.sources = sources

    def _owner(self, key: str) -> SourceWeights:
        for source in self.sources:
            if key in source:
                return source
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [k for s in self.sources for k in s.keys()]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner(key).shape(key)

    def load(self, key: str) -> torch.Tensor:
        return self._owner(key).load(key)


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------
@dataclass
class ConvertedSettings:
    config: LongLLaVAConfig
    pad_to_square: bool
    notes: list[str]
    pooling_source: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _clip_vision_dict(path: Path) -> dict[str, Any]:
    """Vision settings from a CLIP ``config.json`` (``CLIPConfig`` or ``CLIPVisionConfig``)."""
    if path.is_dir():
        path = path / "config.json"
    data = _read_json(path)
    if data.get("model_type") == "clip" or "vision_config" in data:
        data = data.get("vision_config") or {}
    elif data.get("model_type") not in (None, "clip_vision_model"):
        raise CheckpointError(f"{path}: model_type {data.get('model_type')!r} is not a CLIP (vision) config")
    return {k: data[k] for k in _CLIP_VISION_FIELDS if k in data}


def resolve_vision_config(official: dict[str, Any], src: Path, vision_config: str | None,
                          vision_tower: str | None) -> tuple[dict[str, Any], str]:
    """CLIP vision settings and where they came from.

    Order: the ``vision_config`` option, the ``vision_tower`` directory's config, the
    official ``mm_vision_tower`` if it names a local directory (absolute or relative to
    ``src``) with a config, then the known OpenAI CLIP ViT-L/14-336 by name.
    """
    if vision_config:
        return _clip_vision_dict(Path(vision_config)), f"vision_config option ({vision_config})"
    if vision_tower and (Path(vision_tower) / "config.json").exists():
        return _clip_vision_dict(Path(vision_tower)), f"{vision_tower}/config.json"
    name = str(official.get("mm_vision_tower") or official.get("vision_tower") or "")
    if not name:
        raise CheckpointError(f"{src}/config.json: no mm_vision_tower; is this a LongLLaVA checkpoint?")
    if "siglip" in name.lower():
        raise CheckpointError(f"{src}/config.json: vision tower {name!r} is SigLIP; the SDK supports CLIP towers only")
    for candidate in (src / name, Path(name)):  # an absolute name makes both the same
        if (candidate / "config.json").is_file():
            return _clip_vision_dict(candidate), f"{candidate}/config.json"
    if _CLIP_L14_336_NAME.search(name):
        return dict(PRESETS["9b"]["vision"]), f"mm_vision_tower {name!r} (OpenAI CLIP ViT-L/14-336)"
    raise CheckpointError(
        f"{src}/config.json: cannot tell the CLIP dimensions of vision tower {name!r}; pass "
        f"{option_hint('vision_config', 'PATH')} pointing at that CLIP's config.json"
    )


def build_sdk_config(official: dict[str, Any], src: Path, *, pooling: str | None = None,
                     tokens_per_image: int | None = None, vision_config: str | None = None,
                     vision_tower: str | None = None) -> ConvertedSettings:
    """Translate an official ``config.json`` into a :class:`LongLLaVAConfig`.

    Raises:
        CheckpointError: the source is not ``llava_jamba`` or uses a setting that the SDK's
            (transformers 5) model would silently compute differently.
    """
    where = f"{src}/config.json"
    notes: list[str] = []
    model_type = official.get("model_type")
    if model_type != OFFICIAL_MODEL_TYPE:
        raise CheckpointError(f"{where}: model_type is {model_type!r}, expected {OFFICIAL_MODEL_TYPE!r} "
                              "(a released LongLLaVA checkpoint)")
    if official.get("mamba_inner_layernorms", True) is False:
        raise CheckpointError(
            f"{where}: mamba_inner_layernorms is false, but transformers' Jamba always applies the dt/B/C "
            "layernorms inside the Mamba mixer; converting would silently change the model"
        )
    refusals = {
        "mm_projector_type": (lambda v: v == "mlp2x_gelu", "only the mlp2x_gelu projector is supported"),
        "mm_vision_select_feature": (lambda v: v in (None, "patch"), "the SDK drops the CLS token ('patch')"),
        "mm_patch_merge_type": (lambda v: v in (None, "flat"), "anyres/spatial/unpad merging is not supported"),
        "image_aspect_ratio": (lambda v: v in (None, "pad", "square"), "only 'pad' and 'square' are supported"),
        "mm_use_im_start_end": (lambda v: not v, "<im_start>/<im_end> wrapping is not supported"),
        "tie_word_embeddings": (lambda v: not v, "released LongLLaVA has an untied lm_head"),
        "sliding_window": (lambda v: v is None, "transformers' Jamba attention has no sliding window"),
        "resamplePooling": (lambda v: v in (None, "2d", "1d"), "known values are '2d' and '1d'"),
    }
    for name, (ok, why) in refusals.items():
        if name in official and not ok(official[name]):
            raise CheckpointError(f"{where}: {name} = {official[name]!r} is not supported: {why}")

    text = {k: official.get(k, default) for k, default in _OFFICIAL_TEXT_DEFAULTS.items()}
    if text["num_key_value_heads"] is None:
        text["num_key_value_heads"] = text["num_attention_heads"]
    if text["mamba_dt_rank"] == "auto":  # what the official config computes; never leave "auto" to transformers
        text["mamba_dt_rank"] = math.ceil(text["hidden_size"] / 16)
        notes.append(f"mamba_dt_rank 'auto' resolved to {text['mamba_dt_rank']} (ceil(hidden_size / 16))")
    if text["num_experts"] == 1 and text["num_experts_per_tok"] != 1:
        notes.append(f"num_experts_per_tok {text['num_experts_per_tok']} -> 1 (a single expert is a dense MLP)")
        text["num_experts_per_tok"] = 1
    text["max_position_embeddings"] = official.get("max_position_embeddings", official.get("n_ctx", 262144))
    text["tie_word_embeddings"] = False

    vision, vision_from = resolve_vision_config(official, src, vision_config, vision_tower)
    notes.append(f"vision config from {vision_from}")
    mm_hidden = official.get("mm_hidden_size")
    if mm_hidden is not None and mm_hidden != vision.get("hidden_size"):
        raise CheckpointError(f"{where}: mm_hidden_size {mm_hidden} does not match the CLIP hidden size "
                              f"{vision.get('hidden_size')} ({vision_from})")

    official_pooling = official.get("resamplePooling")
    if pooling is not None:
        pooling_source = f"option (official config: {official_pooling!r})"
    elif official_pooling is not None:
        pooling, pooling_source = official_pooling, "official config resamplePooling"
    else:
        pooling = "2d"
        pooling_source = ("default: the official config has no resamplePooling (the official code does not "
                          "save it, so its own loader would skip pooling); the released fine-tuning scripts use 2d")
    notes.append(f"pooling {pooling!r} from {pooling_source}")
    select_layer = official.get("mm_vision_select_layer")
    if select_layer is None:
        select_layer = -2
        notes.append("mm_vision_select_layer missing: using -2 (the released scripts' value)")
    aspect = official.get("image_aspect_ratio")
    if aspect is None:
        notes.append("image_aspect_ratio missing: padding images to squares (the released scripts' 'pad')")

    vision_size = vision.get("image_size", 224) // vision.get("patch_size", 32)
    if tokens_per_image is None:
        tokens_per_image = vision_size**2 if pooling == "none" else 144  # the official code hard-codes 144
    try:
        config = LongLLaVAConfig(
            vision_config=vision, text_config=text, vision_feature_layer=select_layer, pooling=pooling,
            tokens_per_image=tokens_per_image, projector_type="mlp2x_gelu",
            max_context=text["max_position_embeddings"],
        )
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: the settings do not form a valid LongLLaVA config: {exc}") from exc
    return ConvertedSettings(config, pad_to_square=aspect != "square", notes=notes, pooling_source=pooling_source)


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
def parse_shard_size(size: str | int) -> int:
    """``"5GB"`` (5 x 10^9) / ``"500MB"`` / ``"2GiB"`` / ``1000`` (bytes) -> bytes, as transformers reads
    ``max_shard_size`` (:func:`longllava_sdk.units.parse_size`)."""
    try:
        return parse_size(size, what="max_shard_size", example="5GB or 500MB")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


class ShardWriter:
    """Write tensors into ``model-XXXXX-of-YYYYY.safetensors`` shards of bounded size."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + size > self.max_bytes:
            self.flush()
        self._buffer[key] = tensor.contiguous()
        self._buffer_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self._buffer:
            return
        save_file(self._buffer, str(self.directory / f".shard-{len(self._shards):05d}"), metadata={"format": "pt"})
        self._shards.append(list(self._buffer))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self) -> list[str]:
        """Name the shards, write the HF index if there are several; return the file names."""
        self.flush()
        count = len(self._shards)
        names = (["model.safetensors"] if count == 1 else
                 [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)])
        weight_map: dict[str, str] = {}
        for i, (name, keys) in enumerate(zip(names, self._shards)):
            os.replace(self.directory / f".shard-{i:05d}", self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.directory / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names


def build_tensor(out: OutputTensor, sources: CombinedSources, dtype: torch.dtype | None) -> torch.Tensor:
    """Materialise one output tensor, loading its sources one at a time."""
    if out.kind == "copy":
        tensor = sources.load(out.sources[0])
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    first = sources.load(out.sources[0])
    target_dtype = dtype or first.dtype
    if out.kind == "gate_up":
        n_experts, inter = len(out.sources) // 2, first.shape[0]
        fused = torch.empty((n_experts, 2 * inter, first.shape[1]), dtype=target_dtype)
        for i, key in enumerate(out.sources):
            tensor = first if i == 0 else sources.load(key)
            expert, half = divmod(i, 2)  # half 0 = gate_proj rows [:I], half 1 = up_proj rows [I:]
            fused[expert, half * inter:(half + 1) * inter] = tensor
        return fused
    stacked = torch.empty((len(out.sources), *first.shape), dtype=target_dtype)
    for i, key in enumerate(out.sources):
        stacked[i] = first if i == 0 else sources.load(key)
    return stacked


def expected_shapes(config: LongLLaVAConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the SDK model ``config`` describes (built on the meta device)."""
    from .modeling.modeling_longllava import LongLLaVAForConditionalGeneration

    with torch.device("meta"):
        model = LongLLaVAForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _listing(items: dict[str, str] | list[str]) -> str:
    lines = [f"{k}: {v}" for k, v in items.items()] if isinstance(items, dict) else list(items)
    more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return "\n  " + "\n  ".join(lines[:MAX_LISTED]) + more


def check_plan(plan: ConversionPlan, sources: CombinedSources, expected: dict[str, tuple[int, ...]],
               src: Path) -> None:
    """Raise :class:`CheckpointError` unless the plan produces exactly the SDK's parameters."""
    if plan.unmapped:
        raise CheckpointError(f"{src}: {len(plan.unmapped)} source tensor(s) have no conversion rule "
                              f"(nothing was written):{_listing(plan.unmapped)}")
    produced: dict[str, OutputTensor] = {}
    problems: dict[str, str] = {}
    for out in plan.outputs:
        if out.target in produced:
            problems[out.target] = f"produced twice (from {produced[out.target].sources[0]} and {out.sources[0]})"
        produced[out.target] = out
        if out.target not in expected:
            problems[", ".join(out.sources[:2])] = f"maps to {out.target}, which the configured model does not have"
            continue
        shape = output_shape(out, sources.shape)
        if shape != expected[out.target]:
            problems[out.target] = (f"from {out.sources[0]}{' ...' if len(out.sources) > 1 else ''}: "
                                    f"shape {shape}, the configured model needs {expected[out.target]}")
    for key, why in plan.incomplete.items():
        problems[key] = f"missing from the source: {why}"
    missing = sorted(set(expected) - set(produced))
    if missing:
        problems.update(dict.fromkeys(missing, "missing: no source tensor provides it"))
    if problems:
        raise CheckpointError(f"{src}: the weights do not match the configured model (nothing was written):"
                              f"{_listing(problems)}")


def _resolve_dtype(dtype: str) -> torch.dtype | None:
    if dtype in ("auto", "", None):
        return None
    value = getattr(torch, DTYPES.get(str(dtype), str(dtype)), None)  # the SDK's dtype names and aliases
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise CheckpointError(f"dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    return value


def _load_tokenizer(src: Path, vocab_size: int) -> Any:
    """The checkpoint's tokenizer, exactly as its files define it.

    Loaded as the generic fast tokenizer on purpose: the official tokenizer_config names
    ``LlamaTokenizer``, whose transformers-5 class rebuilds the pre-tokenizer with a
    ``▁`` prefix space. Jamba's SentencePiece model has ``add_dummy_prefix: false``, so that
    would shift every first word to another token id ("Hello" -> "▁Hello").
    """
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(src, local_files_only=True)
    except Exception as exc:  # transformers raises many types here (OSError, ValueError, ImportError...)
        raise CheckpointError(
            f"{src}: cannot load the tokenizer ({type(exc).__name__}: {exc}). The directory needs tokenizer.json, "
            "or tokenizer.model with the 'sentencepiece' package installed"
        ) from exc
    if len(tokenizer) > vocab_size:
        raise CheckpointError(f"{src}: the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} "
                              "embeddings")
    return tokenizer


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise CheckpointError(f"{src}: source checkpoint directory does not exist")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json (is this a LongLLaVA checkpoint directory?)")
    s, d = src.resolve(), dst.resolve()
    if s == d or s in d.parents or d in s.parents:
        raise CheckpointError(f"{dst}: the output must not be, contain or lie inside the source {src}")


def _iter_outputs(plan: ConversionPlan, order: list[str]) -> Iterator[OutputTensor]:
    by_target = {o.target: o for o in plan.outputs}
    return (by_target[k] for k in order)


def convert_official(
    src: str,
    dst: str,
    overwrite: bool = False,
    dtype: str = "auto",
    pooling: str | None = None,
    tokens_per_image: int | None = None,
    vision_tower: str | None = None,
    vision_config: str | None = None,
    allow_pickle: bool = False,
    max_shard_size: str = "5GB",
) -> str:
    """Convert a released LongLLaVA checkpoint (model_type llava_jamba) in SRC to the SDK's format in DST.

    Every source tensor is mapped (per-expert MoE weights fused into transformers' 3-D expert
    tensors, single-expert layers into the dense MLP) or dropped by a named rule; anything
    else is an error listing the keys, and nothing is written. DST is written atomically:
    safetensors shards + index, config.json, tokenizer and processor files, and
    conversion_report.json recording every decision (pooling, dropped keys, notes).

    Args:
        src: directory of the official checkpoint (config.json, *.safetensors, tokenizer files).
        dst: output directory (must not exist or be empty unless --overwrite).
        overwrite: replace a non-empty DST (only once the new checkpoint is complete).
        dtype: output dtype of floating tensors: auto (keep the source's), bfloat16, float16 or float32.
        pooling: image token pooling (2d, 1d, none); default: the official config's resamplePooling,
            else 2d (the official code forgets to save it; the released fine-tuning used 2d).
        tokens_per_image: tokens per image after pooling (default 144, as the official code).
        vision_tower: local CLIP directory (safetensors) to take the vision weights from when SRC
            has none under model.vision_tower.vision_tower.
        vision_config: CLIP config.json (or its directory) when the vision tower is not the
            standard OpenAI CLIP ViT-L/14-336 and SRC does not point at its config.
        allow_pickle: also read pickle weights (.bin) with torch.load(weights_only=True);
            only for sources you trust.
        max_shard_size: largest output shard, e.g. 5GB or 500MB.
    """
    src_path, dst_path = Path(src), Path(dst)
    _check_paths(src_path, dst_path)
    official = _read_json(src_path / "config.json")
    settings = build_sdk_config(official, src_path, pooling=pooling, tokens_per_image=tokens_per_image,
                                vision_config=vision_config, vision_tower=vision_tower)
    config = settings.config
    out_dtype = _resolve_dtype(dtype)
    shard_bytes = parse_shard_size(max_shard_size)

    main = SourceWeights(src_path, allow_pickle=allow_pickle)
    has_vision = any(_VISION_KEY.match(k) for k in main.keys())
    parts = [main]
    if vision_tower is not None:
        if has_vision:
            raise CheckpointError(f"{src}: the checkpoint already holds vision-tower weights; drop the "
                                  f"vision_tower option ({vision_tower}) or remove them")
        parts.append(SourceWeights(Path(vision_tower), allow_pickle=allow_pickle, namespace=CLIP_NAMESPACE))
    elif not has_vision:
        raise CheckpointError(f"{src}: no CLIP weights (model.vision_tower.vision_tower.*) in the checkpoint; "
                              f"pass {option_hint('vision_tower', 'DIR')} with the CLIP vision tower's safetensors")
    sources = CombinedSources(*parts)

    plan = plan_conversion(sources.keys(), sources.shape, config.text_config.layers_num_experts)
    expected = expected_shapes(config)
    check_plan(plan, sources, expected, src_path)
    tokenizer = _load_tokenizer(src_path, config.text_config.vocab_size)

    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    from .processing import LongLLaVAProcessor

    with atomic_directory(dst_path, overwrite=overwrite) as staging:
        writer = ShardWriter(staging, shard_bytes)
        dtypes: set[torch.dtype] = set()
        for out in tqdm(list(_iter_outputs(plan, list(expected))), desc="converting", unit="tensor", disable=None):
            tensor = build_tensor(out, sources, out_dtype)
            if tensor.is_floating_point():
                dtypes.add(tensor.dtype)
            writer.add(out.target, tensor)
            del tensor
        shards = writer.finish()
        if len(dtypes) == 1:
            config.dtype = str(next(iter(dtypes))).removeprefix("torch.")
        config.save_pretrained(staging)
        text = config.text_config
        if (src_path / "generation_config.json").is_file():
            generation = GenerationConfig.from_pretrained(src_path, local_files_only=True)
        else:
            generation = GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                                          pad_token_id=text.pad_token_id)
        generation.save_pretrained(staging)
        processor = LongLLaVAProcessor.for_config(config, tokenizer)
        processor.pad_to_square = settings.pad_to_square
        processor.save_pretrained(staging)
        report = {
            "source": str(src_path.resolve()),
            "source_model_type": official.get("model_type"),
            "source_weights": "safetensors" if main.is_safetensors else "pickle (allow_pickle)",
            "vision_weights_from": str(Path(vision_tower).resolve()) if vision_tower else "source checkpoint",
            "pooling": config.pooling,
            "pooling_source": settings.pooling_source,
            "tokens_per_image": config.tokens_per_image,
            "pad_to_square": settings.pad_to_square,
            "dtype": dtype,
            "source_tensors": len(sources.keys()),
            "output_tensors": len(plan.outputs),
            "output_shards": shards,
            "dropped": [{"key": k, "rule": v} for k, v in sorted(plan.dropped.items())],
            "notes": settings.notes,
            "official_config": official,
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"converted {len(sources.keys())} tensors from {src} into {len(plan.outputs)} tensors "
          f"({len(plan.dropped)} dropped by rule, see {REPORT_FILE}) in {dst}")
    return str(dst_path)


__all__ = ["convert_official", "build_sdk_config", "plan_conversion", "SourceWeights", "ShardWriter"]
