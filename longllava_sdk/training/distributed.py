"""Multi-process training: DeepSpeed presets, ZeRO-3 hazards, and the CPU (gloo) path.

What the trainer calls, in this order::

    setup = prepare_distributed(deepspeed="zero3", run_dir=output_dir)   # before TrainingArguments
    args = TrainingArguments(output_dir, ..., **setup.training_arguments_kwargs())
    model = ...                       # build / load the model *after* TrainingArguments (ZeRO-3 Init)
    prepare_model_for_distributed(model, setup)   # MoE leaf modules + text-only dummy image
    Trainer(model=model, args=args, ...).train()

* :func:`deepspeed_config` builds the named presets (``zero2``, ``zero3``,
  ``zero3-offload``) as plain dicts whose batch / precision / bucket values are ``"auto"``
  where transformers' DeepSpeed integration fills them from ``TrainingArguments`` and the
  model; :func:`prepare_distributed` writes the chosen one into the run directory.
* ZeRO-3 hazards (every rank must issue the same collectives in the same order, or the
  job hangs): :func:`prepare_model_for_zero3` registers the Jamba MoE block as a ZeRO-3
  *leaf* (its expert weights are gathered on block entry, whatever experts this rank's
  tokens pick); :func:`install_text_only_dummy_image` makes a text-only batch still run
  the vision tower and projector on a dummy image whose contribution is multiplied by
  exactly zero, and pads ranks with fewer images with such dummies so that every rank
  makes the same number of CLIP calls: the graph (and the parameter all-gathers /
  gradient reductions) is the same on every rank.
* CPU (gloo) runs: with no GPU, accelerate only builds a process group when told the run
  is on CPU (``use_cpu=True``), and in DeepSpeed mode it never does (its backend stays
  ``None``, so each process trains alone on all the data). :func:`prepare_distributed`
  fixes both: DDP gets ``use_cpu=True, ddp_backend="gloo"``; DeepSpeed gets a gloo group
  and an accelerate state configured for DeepSpeed before ``TrainingArguments`` exists.
  On GPUs nothing of this is touched: torchrun / accelerate / deepspeed set up NCCL.

DeepSpeed itself is imported only inside functions that need it (it is an optional extra
and importing it costs seconds and prints accelerator-detection logs).
"""

from __future__ import annotations

import copy
import datetime
import functools
import inspect
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError, MissingDependencyError, TrainingError

PRESETS: tuple[str, ...] = ("zero2", "zero3", "zero3-offload")
DEEPSPEED_CONFIG_NAME = "deepspeed_config.json"
# MoE blocks whose experts are picked per token: ZeRO-3 must gather them as one unit.
MOE_LEAF_MODULE_CLASSES: tuple[str, ...] = ("JambaSparseMoeBlock",)
_DUMMY_HOOK_ATTR = "_longllava_dummy_image_forward"

# Bucket sizes in elements. ZeRO-2's are fixed (200M elements ~ 400 MB in bf16: large enough
# to keep the link busy, small enough for 40 GB cards); ZeRO-3's depend on the hidden size
# and are left "auto" so transformers fills them from the model (hidden^2, 0.9 hidden^2,
# 10 hidden).
_ZERO2_BUCKET = 200_000_000
_ZERO3_LIVE = 1_000_000_000


# ----------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------
def _common_section() -> dict[str, Any]:
    # "auto": filled by transformers' HfTrainerDeepSpeedConfig from TrainingArguments
    # (per_device_train_batch_size, gradient_accumulation_steps, max_grad_norm, bf16/fp16).
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "steps_per_print": 1_000_000,  # the Trainer logs; DeepSpeed's own prints are noise
        "wall_clock_breakdown": False,
    }


def deepspeed_config(
    preset: str,
    *,
    offload: bool | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config of a named preset, as a dict ready for ``TrainingArguments(deepspeed=...)``.

    Args:
        preset: ``"zero2"`` (optimizer state + gradients sharded), ``"zero3"`` (also the
            parameters; needed for the 53B A13B model), ``"zero3-offload"`` (ZeRO-3 with
            parameters and optimizer state in CPU memory, DeepSpeed's CPU Adam).
        offload: ``True`` turns ``zero3`` into ``zero3-offload``; ``False`` on
            ``zero3-offload`` is a contradiction and raises. ``zero2`` cannot offload here
            (use ``zero3-offload``: offloading only pays off when parameters are sharded).
        overrides: nested values merged over the preset (e.g.
            ``{"zero_optimization": {"stage3_max_live_parameters": 5e8}}``).

    Returns:
        A fresh dict (safe to mutate). Precision is ``"auto"``: DeepSpeed then follows
        ``TrainingArguments.bf16`` / ``fp16``, which :meth:`DistributedSetup.training_arguments_kwargs`
        sets to bf16 on GPUs that support it.
    """
    name = str(preset).strip().lower().replace("_", "-")
    if name not in PRESETS:
        raise ConfigError(f"unknown DeepSpeed preset {preset!r}; available: {', '.join(PRESETS)}")
    if offload is True:
        if name == "zero2":
            raise ConfigError("the zero2 preset does not offload; use 'zero3-offload'")
        name = "zero3-offload"
    elif offload is False and name == "zero3-offload":
        raise ConfigError("preset 'zero3-offload' with offload=False: use preset 'zero3'")

    config = _common_section()
    if name == "zero2":
        config["zero_optimization"] = {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "allgather_partitions": True,
            "allgather_bucket_size": _ZERO2_BUCKET,
            "reduce_scatter": True,
            "reduce_bucket_size": _ZERO2_BUCKET,
        }
    else:
        zero: dict[str, Any] = {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "sub_group_size": _ZERO3_LIVE,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_max_live_parameters": _ZERO3_LIVE,
            "stage3_max_reuse_distance": _ZERO3_LIVE,
            # save_model() gathers the shards into one 16-bit state dict on rank 0, so the
            # run directory holds a normal safetensors model (not only ZeRO shards).
            "stage3_gather_16bit_weights_on_model_save": True,
        }
        if name == "zero3-offload":
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
            # Offloaded optimizer state needs DeepSpeed's CPU Adam; a torch optimizer is
            # refused by DeepSpeed (zero_force_ds_cpu_optimizer). Hyper-parameters are
            # "auto" (from TrainingArguments); the LR schedule stays the Trainer's (cosine).
            config["optimizer"] = {
                "type": "AdamW",
                "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
            }
        config["zero_optimization"] = zero
    if overrides:
        _deep_merge(config, overrides)
    return config


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def zero_stage(config: dict[str, Any] | str | os.PathLike[str] | None) -> int:
    """ZeRO stage of a config dict / preset name / JSON file (0 when none)."""
    if config is None:
        return 0
    if isinstance(config, str) and config.strip().lower().replace("_", "-") in PRESETS:
        config = deepspeed_config(config)
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


def write_deepspeed_config(config: dict[str, Any], run_dir: str | os.PathLike[str]) -> Path:
    """Write ``config`` to ``run_dir/deepspeed_config.json`` atomically (temp file + ``os.replace``).

    Every rank may call this: they write identical bytes, and the rename is atomic.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / DEEPSPEED_CONFIG_NAME
    fd, tmp = tempfile.mkstemp(prefix=".deepspeed_config.", suffix=".json", dir=run_dir)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; launchers on other users' nodes must read it
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ----------------------------------------------------------------------------------------------
# process environment
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributedEnv:
    """What the launcher (torchrun, accelerate launch, deepspeed) told this process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # a launcher set RANK / LOCAL_RANK / WORLD_SIZE

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def distributed_env() -> DistributedEnv:
    """Read rank / world size from the environment torchrun, accelerate and deepspeed set."""
    if "LOCAL_RANK" not in os.environ and "RANK" not in os.environ:
        return DistributedEnv()
    try:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise ConfigError(f"malformed launcher environment (RANK/LOCAL_RANK/WORLD_SIZE): {exc}") from None
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    return DistributedEnv(rank, local_rank, world_size, launched=True)


def find_free_port() -> int:
    """A TCP port free on localhost right now (for single-node rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accelerator_available() -> bool:
    """True when a CUDA device is visible (the path DeepSpeed and NCCL are meant for)."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def init_distributed_cpu(timeout_s: float = 600.0) -> DistributedEnv:
    """Initialise a gloo process group from the launcher's environment (no-op if one exists).

    Single-process callers without a launcher get ``RANK=0, WORLD_SIZE=1`` and a free
    localhost port, so DeepSpeed can still be used on one CPU process.

    Returns:
        The :class:`DistributedEnv` of this process.
    """
    import torch.distributed as dist

    env = distributed_env()
    if not env.launched:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(find_free_port()))
        env = distributed_env()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        raise ConfigError("MASTER_PORT is not set: launch with torchrun / accelerate launch / deepspeed")
    if not dist.is_available():
        raise TrainingError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", rank=env.rank, world_size=env.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    elif dist.get_world_size() != env.world_size:
        raise TrainingError(f"process group has {dist.get_world_size()} ranks but WORLD_SIZE={env.world_size}")
    return env


def import_deepspeed() -> Any:
    """Import DeepSpeed (only when a preset is used); a clear error when the extra is missing."""
    if not accelerator_available():
        # Skip DeepSpeed's GPU probing (and its warning) on CPU-only hosts.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise MissingDependencyError(
            None, f"DeepSpeed presets need the 'deepspeed' extra: pip install 'longllava-sdk[deepspeed]' ({exc})"
        ) from None
    return deepspeed


# ----------------------------------------------------------------------------------------------
# the trainer-facing setup
# ----------------------------------------------------------------------------------------------
@dataclass
class DistributedSetup:
    """Result of :func:`prepare_distributed`: what to pass to ``TrainingArguments``.

    Attributes:
        preset: the DeepSpeed preset name, or ``None`` for plain DDP / single process.
        env: rank / world size of this process.
        device_type: ``"cuda"`` or ``"cpu"``.
        backend: the collective backend (``"nccl"`` / ``"gloo"``) or ``None`` when alone.
        deepspeed_config_path: where the main process wrote the config (``run_dir``), or the
            user's own JSON when no ``run_dir`` was given; ``None`` without DeepSpeed.
        deepspeed_config: the same config as a dict.
    """

    preset: str | None
    env: DistributedEnv
    device_type: str
    backend: str | None
    deepspeed_config_path: Path | None = None
    deepspeed_config: dict[str, Any] | None = None
    _kwargs: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def zero_stage(self) -> int:
        return zero_stage(self.deepspeed_config)

    def training_arguments_kwargs(self) -> dict[str, Any]:
        """Keyword arguments to merge into ``transformers.TrainingArguments``.

        ``deepspeed`` (the config dict, also written to ``run_dir``), ``bf16`` on GPUs that
        support it, and on CPU the settings that make accelerate shard over gloo
        (``use_cpu``/``ddp_backend`` for DDP, ``accelerator_config={"use_configured_state":
        True}`` and ``use_cpu=False`` for DeepSpeed). Apply them last: they override defaults.
        """
        return copy.deepcopy(self._kwargs)


def prepare_distributed(
    deepspeed: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    *,
    offload: bool | None = None,
    overrides: dict[str, Any] | None = None,
    bf16: bool | None = None,
) -> DistributedSetup:
    """Set up this process for (possibly) multi-process training; call before ``TrainingArguments``.

    Args:
        deepspeed: a preset name (``zero2``, ``zero3``, ``zero3-offload``), a path to a
            user's own DeepSpeed JSON, or ``None`` (DDP when launched with several
            processes, else single process).
        run_dir: where the main process writes the effective config (``deepspeed_config.json``);
            required with a preset. Create / check the folder before calling this on rank 0.
        offload / overrides: forwarded to :func:`deepspeed_config`.
        bf16: mixed precision; ``None`` = bf16 exactly when a bf16-capable GPU is present.

    Returns:
        A :class:`DistributedSetup`; merge ``setup.training_arguments_kwargs()`` into
        ``TrainingArguments``.
    """
    env = distributed_env()
    on_gpu = accelerator_available()
    if bf16 is None:
        bf16 = bool(on_gpu and torch.cuda.is_bf16_supported())
    elif bf16 and not on_gpu and deepspeed is not None:
        raise ConfigError("bf16 with DeepSpeed needs a GPU; on CPU train in float32 (bf16=False)")
    kwargs: dict[str, Any] = {"bf16": bool(bf16)} if bf16 else {}

    ds_dict: dict[str, Any] | None = None
    ds_path: Path | None = None
    preset_name: str | None = None
    if deepspeed is not None:
        candidate = str(deepspeed).strip().lower().replace("_", "-")
        if candidate in PRESETS:
            if run_dir is None:
                raise ConfigError("a DeepSpeed preset needs run_dir (the config is written there)")
            ds_dict = deepspeed_config(candidate, offload=offload, overrides=overrides)
            preset_name = "zero3-offload" if offload else candidate
        else:
            ds_path = Path(deepspeed)
            if not ds_path.is_file():
                raise ConfigError(
                    f"--deepspeed {deepspeed!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file"
                )
            try:
                ds_dict = json.loads(ds_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{ds_path}: not a readable DeepSpeed JSON config ({exc})") from None
            if not isinstance(ds_dict, dict):
                raise ConfigError(f"{ds_path}: a DeepSpeed config must be a JSON object")
            if overrides:
                _deep_merge(ds_dict, overrides)
        import_deepspeed()  # fail now, with the install hint, rather than inside the Trainer
        if run_dir is not None:
            ds_path = Path(run_dir) / DEEPSPEED_CONFIG_NAME
            # Only the main process writes: the others may start before it has checked /
            # cleaned the output folder. Every rank gets the config itself, not the path.
            if env.is_main_process:
                write_deepspeed_config(ds_dict, run_dir)
        kwargs["deepspeed"] = copy.deepcopy(ds_dict)

    backend: str | None = None
    if on_gpu:
        # torchrun / accelerate / deepspeed launchers + transformers set up NCCL themselves.
        backend = "nccl" if (env.is_distributed or deepspeed is not None) else None
    elif deepspeed is not None:
        env = _prepare_cpu_deepspeed_state()
        backend = "gloo"
        kwargs["accelerator_config"] = {"use_configured_state": True}
        # The configured state is DeepSpeed-on-gloo; use_cpu would ask accelerate for its
        # MULTI_CPU mode instead (the mode this path replaces).
        kwargs["use_cpu"] = False
    elif env.is_distributed:
        # accelerate's MULTI_CPU mode (it initialises the gloo group itself).
        backend = "gloo"
        kwargs["use_cpu"] = True
        kwargs["ddp_backend"] = "gloo"
    return DistributedSetup(preset_name or (None if deepspeed is None else str(deepspeed)), env,
                            "cuda" if on_gpu else "cpu", backend, ds_path, ds_dict, kwargs)


def _prepare_cpu_deepspeed_state() -> DistributedEnv:
    """Make accelerate run DeepSpeed over a gloo group on CPU.

    Without a GPU, accelerate's ``PartialState`` (built inside ``TrainingArguments``) picks
    no backend in DeepSpeed mode and reports one process, so every rank would train on all
    the data. Building the state here with ``backend="gloo"`` and the DeepSpeed flag gives
    ``DistributedType.DEEPSPEED`` with the real world size; ``TrainingArguments`` then
    reuses it (``accelerator_config={"use_configured_state": True}``).
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    deepspeed = import_deepspeed()
    env = init_distributed_cpu()
    import deepspeed.comm as ds_comm

    if not ds_comm.is_initialized():
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op (1-2 min, needs
        # a C++ toolchain) that only tensor-parallel *inference* uses; training collectives
        # go through the gloo group. Skip the build unless the op was installed prebuilt.
        compatible = deepspeed.ops.__compatible_ops__
        if not getattr(deepspeed.git_version_info, "installed_ops", {}).get("deepspeed_shm_comm", False):
            compatible["deepspeed_shm_comm"] = False
        ds_comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        state = PartialState(backend="gloo")
    finally:
        if previous is None:
            os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    if state.distributed_type != DistributedType.DEEPSPEED or state.num_processes != env.world_size:
        raise TrainingError(
            f"accelerate did not enter DeepSpeed mode over gloo (got {state.distributed_type}, "
            f"{state.num_processes} process(es) for WORLD_SIZE={env.world_size})"
        )
    return env


# ----------------------------------------------------------------------------------------------
# model preparation: ZeRO-3 leaf modules and the text-only dummy image
# ----------------------------------------------------------------------------------------------
def prepare_model_for_zero3(model: nn.Module, leaf_classes: tuple[str, ...] = MOE_LEAF_MODULE_CLASSES) -> list[nn.Module]:
    """Register the MoE blocks of ``model`` as ZeRO-3 leaf modules (before ``deepspeed.initialize``).

    Under ZeRO-3 each submodule gathers its parameters when it runs. Which experts run
    depends on the router, so ranks would gather different expert sets and deadlock; a leaf
    module gathers all its parameters on entry instead. Models without MoE blocks (the 9B,
    one expert everywhere) are left unchanged.

    Returns:
        The modules flagged as leaves (empty when the model has none).
    """
    present = {type(m).__name__ for m in model.modules()}
    wanted = [name for name in leaf_classes if name in present]
    if not wanted:
        return []
    import_deepspeed()
    from deepspeed.utils import set_z3_leaf_modules

    return list(set_z3_leaf_modules(model, wanted))


def _find_multimodal_model(model: nn.Module) -> nn.Module:
    """The LongLLaVA module inside wrappers (peft ``PeftModel``, DDP, DeepSpeed engine)."""
    for module in model.modules():
        # Look at the class: peft wrappers forward unknown attributes to the wrapped model.
        if hasattr(type(module), "get_image_features") and hasattr(type(module), "embed_inputs"):
            return module
    raise ConfigError(f"{type(model).__name__} contains no LongLLaVA model (get_image_features / embed_inputs)")


def text_only_dummy_image(config: Any, dtype: torch.dtype = torch.float32,
                          device: torch.device | str | None = None, count: int = 1) -> torch.Tensor:
    """Dummy images: ``(count, 3, S, S)`` zeros, i.e. the CLIP mean colour after normalisation."""
    size = int(config.vision_config.image_size)
    return torch.zeros(count, 3, size, size, dtype=dtype, device=device)


def _zero3_partitioned(module: nn.Module) -> bool:
    """True when ``module``'s parameters are ZeRO-3 partitioned (gathered on every call)."""
    first = next(module.parameters(), None)
    return first is not None and hasattr(first, "ds_id")


def _max_over_ranks(value: int, device: torch.device) -> int:
    """``max(value)`` over all ranks (one scalar all-reduce; NCCL needs ``device`` on the GPU)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def vision_calls(num_images: int, chunk_size: int) -> int:
    """CLIP forward calls ``get_image_features`` makes for ``num_images`` (``vision_chunk_size`` each)."""
    return -(-num_images // max(1, chunk_size))


def dummy_images_needed(num_images: int, calls: int, chunk_size: int) -> int:
    """Dummy images to append to ``num_images`` so that encoding them takes exactly ``calls`` CLIP calls."""
    chunk_size = max(1, chunk_size)
    if calls <= vision_calls(num_images, chunk_size):
        return 0
    return (calls - 1) * chunk_size + 1 - num_images


def install_text_only_dummy_image(model: nn.Module) -> Callable[[], None]:
    """Make every rank run the vision tower and projector the same way in every step.

    Two ZeRO-3 / DDP hazards, one mechanism (dummy images whose features are multiplied
    by exactly zero, so values, loss, logits and every head are unchanged while the
    vision tower / projector stay in the graph and receive zero gradients):

    * **text-only batches**: in training mode, a forward call without images encodes one
      :func:`text_only_dummy_image` and adds ``0.0 * features.sum()`` to the input
      embeddings. Without it, ranks with and without images in a step gather (ZeRO-3) or
      reduce (DDP without ``find_unused_parameters``) different parameters and hang.
    * **different image counts** (ZeRO-3 only, training and evaluation): CLIP runs
      ``vision_chunk_size`` images per call and ZeRO-3 all-gathers its weights on every
      call, so a rank with 40 images (3 calls) and one with 4 (1 call) issue different
      collectives. When the parameters are partitioned, the ranks agree on the largest
      call count (one scalar all-reduce per forward) and the others pad their images
      with dummies up to it. In evaluation, steps where no rank has images stay
      image-free (generation's decode steps).

    The wrapper is set on the LongLLaVA module's instance ``forward`` (found inside peft /
    DDP / DeepSpeed wrappers), so it runs whether a wrapper calls ``module(...)`` or
    ``module.forward(...)``; it leaves ``inputs_embeds`` calls alone. Idempotent.

    Returns:
        A function that removes the wrapper.
    """
    target = _find_multimodal_model(model)
    if getattr(target, _DUMMY_HOOK_ATTR, None) is not None:
        return getattr(target, _DUMMY_HOOK_ATTR)
    original = target.forward  # bound method
    signature = inspect.signature(original)
    encode = target.get_image_features  # bound method of the class

    def zero_term(pad: int, device: torch.device) -> torch.Tensor:
        """``0.0 * sum(features of pad dummy images)``: exactly zero, but in the graph."""
        return encode(text_only_dummy_image(target.config, device=device, count=pad)).sum() * 0.0

    def padded_features(pixel_values: torch.Tensor, pad: int) -> torch.Tensor:
        """Features of ``pixel_values`` (N, 3, S, S) encoded in one call together with ``pad`` dummies."""
        n = pixel_values.shape[0]
        dummies = text_only_dummy_image(target.config, pixel_values.dtype, pixel_values.device, count=pad)
        features = encode(torch.cat([pixel_values, dummies]))
        return features[:n] + features[n:].sum() * 0.0  # x + 0.0 == x for every finite x

    @functools.wraps(original)
    def forward_with_dummy_images(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        arguments = bound.arguments
        input_ids = arguments.get("input_ids")
        if input_ids is None or arguments.get("inputs_embeds") is not None:
            return original(*args, **kwargs)
        pixel_values = arguments.get("pixel_values")
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        chunk = int(target.config.vision_chunk_size)
        local = vision_calls(n_images, chunk)
        sharded = _zero3_partitioned(target.vision_tower)
        if not (sharded or target.training):
            return original(*args, **kwargs)
        calls = _max_over_ranks(local, input_ids.device) if sharded else local
        if target.training:
            calls = max(calls, 1)
        pad = dummy_images_needed(n_images, calls, chunk)
        if pad == 0:
            return original(*args, **kwargs)
        if n_images == 0:
            # Same module order as an image batch: token embedding, CLIP, projector, LLM.
            embeds = target.embed_inputs(input_ids, None)
            arguments.pop("input_ids")
            arguments.pop("pixel_values", None)
            arguments["inputs_embeds"] = embeds + zero_term(pad, embeds.device)
            extra = arguments.pop("kwargs", {})
            return original(**arguments, **extra)
        # Images present: the model's own embed path runs, with the dummies encoded alongside.
        target.get_image_features = lambda pixels: padded_features(pixels, pad)
        try:
            return original(*args, **kwargs)
        finally:
            del target.get_image_features

    target.forward = forward_with_dummy_images

    def remove() -> None:
        if target.__dict__.get("forward") is forward_with_dummy_images:
            del target.forward
        target.__dict__.pop(_DUMMY_HOOK_ATTR, None)

    setattr(target, _DUMMY_HOOK_ATTR, remove)
    return remove


def prepare_model_for_distributed(model: nn.Module, setup: DistributedSetup | None = None) -> nn.Module:
    """Apply the multi-process safeguards ``setup`` calls for; returns ``model``.

    * the text-only dummy image whenever several processes train together or DeepSpeed
      is used (cheap: one CLIP pass per text-only micro-batch);
    * ZeRO-3 leaf registration of the MoE blocks when the config is stage 3.

    Call it after LoRA is applied and before the ``Trainer`` is built.
    """
    setup = setup or DistributedSetup(None, distributed_env(), "cuda" if accelerator_available() else "cpu", None)
    if setup.env.is_distributed or setup.deepspeed_config is not None:
        install_text_only_dummy_image(model)
    if setup.zero_stage == 3:
        prepare_model_for_zero3(model)
    return model
