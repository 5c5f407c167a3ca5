"""Distributed training: DeepSpeed presets, ZeRO-3 safeguards, 2-process gloo runs (DDP, ZeRO-3).

The 2-process tests launch ``tests/distributed_worker.py`` with torchrun on a free localhost
port and compare what each rank wrote (world size, sample ids seen, parameter digests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from longllava_sdk.config import LongLLaVAConfig
from longllava_sdk.errors import ConfigError
from longllava_sdk.modeling.modeling_longllava import LongLLaVAForConditionalGeneration
from longllava_sdk.training import distributed as D

REPO = Path(__file__).resolve().parents[1]
# DeepSpeed is an optional extra ([deepspeed]); CI installs it, a plain `.[test]` install does not.
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
requires_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="needs the [deepspeed] extra")
WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCH_TIMEOUT_S = 240


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _walk_auto(value, path=""):
    """Yield the dotted paths of every "auto" left in a config."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _walk_auto(inner, f"{path}.{key}" if path else key)
    elif value == "auto":
        yield path


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    return env


def _torchrun(mode: str, model_dir: Path, out: Path, *extra: str, timeout: float = LAUNCH_TIMEOUT_S):
    """Run the worker on 2 CPU processes; returns (returncode, combined output)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(D.find_free_port()),
           str(WORKER), "--mode", mode, "--model", str(model_dir), "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its two workers (own session)
        output, _ = proc.communicate()
        return None, output
    return proc.returncode, output


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The tiny preset, saved once so every run starts from the same weights."""
    torch.manual_seed(0)
    model = LongLLaVAForConditionalGeneration(LongLLaVAConfig.from_preset("tiny"))
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    return path


def _launch_ok(mode: str, model_dir: Path, out: Path) -> list[dict]:
    code, output = _torchrun(mode, model_dir, out)
    assert code == 0, f"torchrun {mode} failed (code {code}):\n{output[-6000:]}"
    return _ranks(out)


@pytest.fixture(scope="module")
def ddp_run(tiny_model_dir, tmp_path_factory) -> list[dict]:
    return _launch_ok("ddp", tiny_model_dir, tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def zero3_out(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero3")
    _launch_ok("zero3", tiny_model_dir, out)
    return out


def _tiny(seed: int = 0, **text_overrides) -> LongLLaVAForConditionalGeneration:
    torch.manual_seed(seed)
    config = LongLLaVAConfig.from_preset("tiny")
    for key, value in text_overrides.items():
        setattr(config.text_config, key, value)
    return LongLLaVAForConditionalGeneration(config)


def _text_only_batch(model) -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 400, (2, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _image_batch(model) -> dict:
    cfg = model.config
    text = torch.randint(3, 400, (1, 6), generator=torch.Generator().manual_seed(2))
    ids = torch.cat([text[:, :3], torch.full((1, cfg.tokens_per_image), cfg.image_token_id), text[:, 3:]], dim=1)
    labels = ids.masked_fill(ids == cfg.image_token_id, -100)
    pixels = torch.randn(1, 3, cfg.vision_config.image_size, cfg.vision_config.image_size,
                         generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "pixel_values": pixels}


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", D.PRESETS)
def test_preset_shape(preset):
    config = D.deepspeed_config(preset)
    zero = config["zero_optimization"]
    assert zero["stage"] == (2 if preset == "zero2" else 3)
    # Batch, clipping and precision follow TrainingArguments.
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto"
    assert config["bf16"] == {"enabled": "auto"} and config["fp16"] == {"enabled": "auto"}
    if preset == "zero2":
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 200_000_000
    else:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
            assert zero[key] == "auto"
    offloaded = preset == "zero3-offload"
    assert ("offload_optimizer" in zero) == ("offload_param" in zero) == offloaded
    assert ("optimizer" in config) == offloaded  # CPU Adam only when the optimizer state is offloaded
    assert "scheduler" not in config  # the Trainer's cosine schedule stays in charge


def test_preset_options_and_errors():
    assert D.deepspeed_config("zero3", offload=True) == D.deepspeed_config("zero3-offload")
    assert D.deepspeed_config("ZERO3_offload") == D.deepspeed_config("zero3-offload")
    with pytest.raises(ConfigError, match="unknown DeepSpeed preset"):
        D.deepspeed_config("zero4")
    with pytest.raises(ConfigError, match="does not offload"):
        D.deepspeed_config("zero2", offload=True)
    with pytest.raises(ConfigError, match="offload=False"):
        D.deepspeed_config("zero3-offload", offload=False)


def test_overrides_merge_without_touching_the_preset():
    config = D.deepspeed_config("zero3", overrides={"zero_optimization": {"stage3_max_live_parameters": 5}})
    assert config["zero_optimization"]["stage3_max_live_parameters"] == 5
    assert config["zero_optimization"]["stage"] == 3  # siblings kept
    config["zero_optimization"]["stage"] = 99
    assert D.deepspeed_config("zero3")["zero_optimization"]["stage"] == 3  # fresh dict every call
    assert D.zero_stage("zero2") == 2 and D.zero_stage(None) == 0


@pytest.mark.parametrize("preset", D.PRESETS)
@requires_deepspeed
def test_transformers_fills_every_auto(preset):
    """The presets are valid input for transformers' DeepSpeed integration: nothing stays "auto"."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    args = SimpleNamespace(world_size=4, per_device_train_batch_size=2, gradient_accumulation_steps=3,
                           max_grad_norm=1.0, learning_rate=2e-5, adam_beta1=0.9, adam_beta2=0.999,
                           adam_epsilon=1e-8, weight_decay=0.0, save_on_each_node=False, fp16=False,
                           fp16_full_eval=False, bf16=True, bf16_full_eval=False,
                           get_warmup_steps=lambda steps: 0)
    model = SimpleNamespace(config=LongLLaVAConfig.from_preset("tiny"))
    hf_config = HfTrainerDeepSpeedConfig(D.deepspeed_config(preset))
    try:
        hf_config.trainer_config_process(args)
        hf_config.trainer_config_finalize(args, model, num_training_steps=10)
        config = hf_config.config
    finally:
        unset_hf_deepspeed_config()  # the integration keeps a global; don't leak ZeRO-3 into other tests
    assert list(_walk_auto(config)) == []
    assert config["train_batch_size"] == 4 * 2 * 3
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    hidden = 64  # tiny preset's text hidden size: the ZeRO-3 buckets follow the LLM
    if preset != "zero2":
        assert config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
        assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 10 * hidden
    if preset == "zero3-offload":
        assert config["optimizer"]["params"]["lr"] == 2e-5


def test_config_written_atomically(tmp_path):
    path = D.write_deepspeed_config(D.deepspeed_config("zero3"), tmp_path / "run")
    assert path == tmp_path / "run" / D.DEEPSPEED_CONFIG_NAME
    assert json.loads(path.read_text()) == D.deepspeed_config("zero3")
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == [D.DEEPSPEED_CONFIG_NAME]  # no temp files left


# ----------------------------------------------------------------------------------------------
# process setup (single process; the real multi-process paths are the torchrun tests below)
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_launcher(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(D, "accelerator_available", lambda: False)
    return monkeypatch


def test_prepare_single_process_cpu_changes_nothing(no_launcher):
    setup = D.prepare_distributed(None)
    assert setup.env == D.DistributedEnv() and setup.backend is None and setup.device_type == "cpu"
    assert setup.training_arguments_kwargs() == {}


def test_prepare_ddp_under_torchrun_on_cpu_asks_accelerate_for_gloo(no_launcher):
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("LOCAL_RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    setup = D.prepare_distributed(None)
    assert (setup.env.rank, setup.env.world_size, setup.backend) == (1, 2, "gloo")
    # Without use_cpu, accelerate picks no backend on a GPU-less host and each rank trains alone.
    assert setup.training_arguments_kwargs() == {"use_cpu": True, "ddp_backend": "gloo"}
    assert not torch.distributed.is_initialized()  # accelerate builds the group, not us


@requires_deepspeed
def test_prepare_deepspeed_passes_the_config_and_only_rank0_writes_it(no_launcher, tmp_path):
    # The gloo / accelerate state itself is exercised by the torchrun ZeRO-3 test below.
    no_launcher.setattr(D, "_prepare_cpu_deepspeed_state", D.distributed_env)
    no_launcher.setenv("RANK", "1")
    no_launcher.setenv("LOCAL_RANK", "1")
    no_launcher.setenv("WORLD_SIZE", "2")
    setup = D.prepare_distributed("zero3", tmp_path / "run")
    kwargs = setup.training_arguments_kwargs()
    assert kwargs == {"deepspeed": D.deepspeed_config("zero3"), "use_cpu": False,
                      "accelerator_config": {"use_configured_state": True}}
    assert setup.zero_stage == 3 and setup.preset == "zero3" and setup.backend == "gloo"
    assert not (tmp_path / "run").exists()  # rank 1 never touches the run folder
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("LOCAL_RANK", "0")
    setup = D.prepare_distributed("zero2", tmp_path / "run")
    assert json.loads(setup.deepspeed_config_path.read_text()) == D.deepspeed_config("zero2")
    # A user's own JSON (+ overrides) is what runs and what gets recorded.
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}))
    setup = D.prepare_distributed(str(own), tmp_path / "run2", overrides={"zero_optimization": {"stage": 2}})
    assert setup.training_arguments_kwargs()["deepspeed"]["zero_optimization"] == {"stage": 2}
    assert json.loads((tmp_path / "run2" / D.DEEPSPEED_CONFIG_NAME).read_text())["zero_optimization"]["stage"] == 2
    assert json.loads(own.read_text())["zero_optimization"]["stage"] == 1


def test_prepare_rejects_bad_requests_before_side_effects(no_launcher, tmp_path):
    with pytest.raises(ConfigError, match="run_dir"):
        D.prepare_distributed("zero3")
    with pytest.raises(ConfigError, match="neither a preset"):
        D.prepare_distributed("zero5", tmp_path)
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="ds.json"):
        D.prepare_distributed(str(bad), tmp_path)
    with pytest.raises(ConfigError, match="bf16"):
        D.prepare_distributed("zero2", tmp_path, bf16=True)
    no_launcher.setenv("RANK", "3")
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="outside WORLD_SIZE"):
        D.distributed_env()
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / D.DEEPSPEED_CONFIG_NAME).exists()


def test_deepspeed_is_imported_only_when_asked():
    """``import longllava_sdk``, every training / CLI module and the preset API leave DeepSpeed alone."""
    code = textwrap.dedent(
        """
        import importlib, pathlib, sys
        import longllava_sdk, longllava_sdk.training, longllava_sdk.cli
        for package in (longllava_sdk.training, longllava_sdk.cli):
            for source in sorted(pathlib.Path(package.__path__[0]).glob("*.py")):
                if source.stem != "__init__":
                    importlib.import_module(f"{package.__name__}.{source.stem}")
        print("IMPORTED", sorted(m for m in sys.modules if m.startswith("longllava_sdk.training.")))
        from longllava_sdk.training import distributed as D
        D.deepspeed_config("zero3-offload")
        D.prepare_distributed(None)
        loaded = sorted(m for m in sys.modules if m == "deepspeed" or m.startswith("deepspeed."))
        print("DEEPSPEED_MODULES", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_subprocess_env(), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "DEEPSPEED_MODULES []" in result.stdout, result.stdout[-2000:]


# ----------------------------------------------------------------------------------------------
# ZeRO-3 hazards, in one process
# ----------------------------------------------------------------------------------------------
@requires_deepspeed
def test_moe_blocks_become_zero3_leaves():
    model = _tiny()
    leaves = D.prepare_model_for_zero3(model)
    moe = [m for m in model.modules() if type(m).__name__ == "JambaSparseMoeBlock"]
    assert len(moe) == 4 and {id(m) for m in leaves} == {id(m) for m in moe}
    assert all(getattr(m, "_z3_leaf", False) for m in moe)
    dense = _tiny(num_experts=1, num_experts_per_tok=1)  # the 9B layout: no MoE block at all
    assert D.prepare_model_for_zero3(dense) == []


def test_dummy_image_is_exactly_zero_and_connects_the_graph():
    model = _tiny()
    model.train()
    batch = _text_only_batch(model)

    loss_plain = model(**batch).loss
    loss_plain.backward()
    plain = _grads(model)
    # The hazard: without images, the vision tower and projector take no part in the step.
    vision_side = [n for n in plain if n.startswith(("vision_tower.", "projector."))]
    assert vision_side and all(plain[n] is None for n in vision_side)
    assert plain["language_model.lm_head.weight"] is not None
    model.zero_grad(set_to_none=True)
    model(**_image_batch(model)).loss.backward()
    # What a batch with an image updates (CLIP's last layer never does: features come from -2).
    with_image = {n for n, g in _grads(model).items() if g is not None}
    assert set(vision_side) & with_image

    calls = []
    model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    remove = D.install_text_only_dummy_image(model)
    assert D.install_text_only_dummy_image(model) is remove  # idempotent
    model.zero_grad(set_to_none=True)
    loss_dummy = model(**batch).loss
    loss_dummy.backward()
    dummy = _grads(model)
    assert calls, "the vision tower did not run for the text-only batch"
    assert torch.equal(loss_dummy, loss_plain)  # bit for bit
    # Same parameters in the step as for an image batch (so ranks reduce the same set)...
    assert {n for n, g in dummy.items() if g is not None} == with_image
    for name, grad in dummy.items():
        if plain[name] is not None:
            assert torch.equal(grad, plain[name]), f"{name}: gradient changed"
        elif grad is not None:  # ...with zero gradients: the dummy changes nothing
            assert torch.count_nonzero(grad) == 0, f"{name}: the dummy image leaked into the gradient"

    calls.clear()
    model.eval()
    with torch.no_grad():
        model(**batch)
    assert not calls  # inference never pays for the dummy
    model.train()
    remove()
    assert "forward" not in model.__dict__
    model(**batch)
    assert not calls


def test_dummy_image_leaves_image_batches_alone():
    model = _tiny()
    model.train()
    batch = _image_batch(model)
    before = model(**batch).loss
    D.install_text_only_dummy_image(model)
    calls = []
    model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    assert torch.equal(model(**batch).loss, before)
    assert len(calls) == 1  # the real image only


def test_dummy_image_reaches_the_model_inside_peft():
    """LoRA wraps the model and calls ``.forward`` directly: the dummy must still run."""
    from peft import LoraConfig, get_peft_model

    model = _tiny()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj",
                                                    modules_to_save=["projector"]))
    D.install_text_only_dummy_image(peft_model)
    peft_model.train()
    peft_model(**_text_only_batch(model)).loss.backward()
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    projector = [n for n in trainable if "projector" in n]
    assert projector and all(trainable[n].grad is not None for n in projector)
    assert all(p.grad is not None for p in trainable.values())


def test_dummy_image_arithmetic():
    assert [D.vision_calls(n, 16) for n in (0, 1, 16, 17, 40)] == [0, 1, 1, 2, 3]
    assert D.dummy_images_needed(0, 1, 16) == 1  # text-only: one dummy image
    assert D.dummy_images_needed(1, 2, 16) == 16  # 17 images -> 2 calls
    assert D.dummy_images_needed(0, 3, 16) == 33
    assert D.dummy_images_needed(20, 2, 16) == D.dummy_images_needed(20, 1, 16) == 0
    for n in range(0, 40):
        for calls in range(1, 4):
            pad = D.dummy_images_needed(n, calls, 16)
            assert D.vision_calls(n + pad, 16) == max(calls, D.vision_calls(n, 16))


@pytest.mark.parametrize("batch_kind", ["text", "image"])
def test_zero3_ranks_make_the_same_number_of_clip_calls(monkeypatch, batch_kind):
    """Under ZeRO-3 a rank pads its images with dummies up to the largest CLIP call count of all ranks."""
    model = _tiny()
    model.config.vision_chunk_size = 4
    batch = _text_only_batch(model) if batch_kind == "text" else _image_batch(model)
    model.eval()
    with torch.no_grad():
        plain = model(**batch).logits
    calls = []
    model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    D.install_text_only_dummy_image(model)
    monkeypatch.setattr(D, "_zero3_partitioned", lambda module: True)
    monkeypatch.setattr(D, "_max_over_ranks", lambda value, device: 3)  # another rank has 9..12 images
    with torch.no_grad():
        padded = model(**batch).logits
    assert len(calls) == 3  # evaluation too: ZeRO-3 gathers CLIP on every call
    if batch_kind == "text":
        assert torch.equal(padded, plain)
    else:  # the real image now shares a CLIP batch with dummies: same values up to float noise
        torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    calls.clear()
    monkeypatch.setattr(D, "_max_over_ranks", lambda value, device: value)  # nobody has more images
    with torch.no_grad():
        model(**_text_only_batch(model))  # e.g. generation's decode steps: no CLIP at all
    assert calls == []


@requires_deepspeed
def test_prepare_model_for_distributed_applies_what_the_setup_needs(no_launcher):
    model = _tiny()
    D.prepare_model_for_distributed(model, D.prepare_distributed(None))
    assert "forward" not in model.__dict__  # single process: nothing to guard against
    setup = D.DistributedSetup("zero3", D.DistributedEnv(0, 0, 2, True), "cpu", "gloo",
                               deepspeed_config=D.deepspeed_config("zero3"))
    D.prepare_model_for_distributed(model, setup)
    assert "forward" in model.__dict__
    assert all(m._z3_leaf for m in model.modules() if type(m).__name__ == "JambaSparseMoeBlock")


# ----------------------------------------------------------------------------------------------
# 2 processes over gloo, through the HF Trainer
# ----------------------------------------------------------------------------------------------
def _assert_sharded(ranks: list[dict]) -> None:
    for record in ranks:
        assert record["world_size"] == 2 and record["backend"] == "gloo"
        assert record["accelerate_num_processes"] == 2
        assert record["global_step"] == 3
    seen = [set(r["seen"]) for r in ranks]
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 3
    assert seen[0].isdisjoint(seen[1]), f"ranks saw overlapping samples: {seen}"
    assert seen[0] | seen[1] == set(range(6))
    # Step 0 and 1 pair an image batch with a text-only batch: the ZeRO-3 hazard case.
    assert ranks[0]["step_has_images"] != ranks[1]["step_has_images"]


@pytest.mark.compat
@pytest.mark.distributed
def test_ddp_two_processes(ddp_run):
    _assert_sharded(ddp_run)
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ddp_run)
    rank0, rank1 = ddp_run
    assert rank0["before"]["sha256"] == rank1["before"]["sha256"]
    assert rank0["after"]["sha256"] != rank0["before"]["sha256"]  # it trained
    # Different data on each rank, identical parameters afterwards: gradients were all-reduced.
    assert rank0["losses"] != rank1["losses"]
    assert rank0["after"]["sha256"] == rank1["after"]["sha256"]


@pytest.mark.compat
@pytest.mark.distributed
@requires_deepspeed
def test_zero3_two_processes(zero3_out, ddp_run):
    ranks = _ranks(zero3_out)
    _assert_sharded(ranks)
    for record in ranks:
        assert record["distributed_type"] == "DistributedType.DEEPSPEED" and record["deepspeed_enabled"]
        assert record["zero_stage"] == 3
        # Parameters are partitioned: each rank holds about half of them.
        total = record["after"]["numel"]
        assert total * 0.45 < record["local_numel"] < total * 0.6
    rank0, rank1 = ranks
    assert rank0["after"]["sha256"] == rank1["after"]["sha256"] != rank0["before"]["sha256"]
    # Same start, same shards, averaged gradients: ZeRO-3 lands where DDP does.
    ddp_after = torch.tensor(ddp_run[0]["after"]["sample"])
    assert torch.allclose(torch.tensor(rank0["after"]["sample"]), ddp_after, atol=1e-5, rtol=0)
    assert rank0["losses"] == pytest.approx(ddp_run[0]["losses"], abs=1e-4)
    # stage3_gather_16bit_weights_on_model_save: save_model wrote the full model.
    saved = LongLLaVAForConditionalGeneration.from_pretrained(zero3_out / "saved")
    worker = _load_worker()
    assert worker.parameter_digest(saved)["sha256"] == rank0["after"]["sha256"]
    written = json.loads((zero3_out / "run" / D.DEEPSPEED_CONFIG_NAME).read_text())
    assert written == D.deepspeed_config("zero3")


def _load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.distributed
@pytest.mark.slow
@requires_deepspeed
def test_zero3_without_safeguards_breaks(tiny_model_dir, tmp_path):
    """The control experiment: same run without the dummy image -> collective mismatch (or hang)."""
    code, output = _torchrun("zero3", tiny_model_dir, tmp_path, "--no-safeguards", timeout=150)
    assert code != 0, "ZeRO-3 survived a text-only batch on one rank without the dummy image"
    assert not (tmp_path / "rank0.json").exists()
