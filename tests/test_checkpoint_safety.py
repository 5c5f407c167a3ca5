"""Checkpoint safety: safetensors only unless pickle is opted into; atomic saves; exact round trips."""

from __future__ import annotations

import pytest
import torch

from longllava_sdk import LongLLaVAForConditionalGeneration, Pipeline
from longllava_sdk.checkpoint import atomic_directory, check_weights_safe
from longllava_sdk.model_folders import create_model, save_model
from longllava_sdk.errors import CheckpointError, UnsafeCheckpointError


def _inputs(config, n_images: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(3, 200, (1, 10), generator=gen)
    image = torch.full((1, config.tokens_per_image), config.image_token_id)
    ids = torch.cat([text[:, :4]] + [image] * n_images + [text[:, 4:]], dim=1)
    return {"input_ids": ids, "pixel_values": torch.randn(n_images, 3, 336, 336, generator=gen)}


@pytest.fixture
def pickle_only_checkpoint(tmp_path, tiny_model, processor):
    """A complete tiny checkpoint whose weights are a pickle (``pytorch_model.bin``)."""
    tiny_model.config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    torch.save(tiny_model.state_dict(), tmp_path / "pytorch_model.bin")
    return tmp_path


def test_pickle_only_directory_is_refused(pickle_only_checkpoint):
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin"):
        check_weights_safe(pickle_only_checkpoint)
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        Pipeline.from_pretrained(pickle_only_checkpoint, device="cpu")
    assert check_weights_safe(pickle_only_checkpoint, allow_pickle=True) is False


def test_pickle_loads_only_with_explicit_opt_in(pickle_only_checkpoint, tiny_model):
    model = LongLLaVAForConditionalGeneration.from_pretrained(pickle_only_checkpoint, use_safetensors=False)
    expected = tiny_model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_safetensors_checkpoint_is_accepted_and_holds_no_pickle(tiny_checkpoint):
    assert check_weights_safe(tiny_checkpoint) is True
    names = [p.name for p in tiny_checkpoint.iterdir()]
    assert any(n.endswith(".safetensors") for n in names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    pipe = Pipeline.from_pretrained(tiny_checkpoint, device="cpu")
    assert isinstance(pipe.model, LongLLaVAForConditionalGeneration)


def test_missing_or_empty_directories_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        check_weights_safe(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no weight files"):
        check_weights_safe(tmp_path)


def test_save_load_round_trip_gives_identical_logits(tiny_model_and_processor, tiny_checkpoint):
    model, _ = tiny_model_and_processor
    loaded = LongLLaVAForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    original = model.state_dict()
    assert set(loaded.state_dict()) == set(original)
    assert all(torch.equal(v, original[k]) for k, v in loaded.state_dict().items())
    batch = _inputs(model.config)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert loaded.config.pooling == model.config.pooling and loaded.config.tokens_per_image == 144


def test_save_is_atomic_and_refuses_to_clobber(tmp_path):
    model, processor = create_model("tiny", seed=1)
    target = save_model(model, processor, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not empty"):
        save_model(model, processor, target)
    # A failing write leaves the existing checkpoint untouched and no staging directory behind.
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(target, overwrite=True) as staging:
            (staging / "partial.safetensors").write_bytes(b"")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def _copy_folder(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("damage", ["empty", "garbage", "header cut", "data cut"])
def test_damaged_safetensors_name_the_file(tiny_checkpoint, tmp_path, damage):
    folder = _copy_folder(tiny_checkpoint, tmp_path / "model")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"empty": b"", "garbage": b"\x00" * 64, "header cut": data[:1000],
                         "data cut": data[: len(data) // 2]}[damage])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Pipeline.from_pretrained(folder)


def test_corrupt_pickle_is_a_checkpoint_error_naming_the_file(pickle_only_checkpoint):
    (pickle_only_checkpoint / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        Pipeline.from_pretrained(pickle_only_checkpoint, allow_pickle=True)


def test_missing_or_foreign_config_fails_before_allocating(tiny_checkpoint, tmp_path, monkeypatch):
    """transformers would build a default (9B) config for a folder without config.json and allocate it."""
    from longllava_sdk import LongLLaVAConfig

    missing = _copy_folder(tiny_checkpoint, tmp_path / "missing")
    (missing / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        Pipeline.from_pretrained(missing)
    broken = _copy_folder(tiny_checkpoint, tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        Pipeline.from_pretrained(broken)
    foreign = _copy_folder(tiny_checkpoint, tmp_path / "foreign")
    LongLLaVAConfig.from_preset("9b").save_pretrained(foreign)  # a 9B config beside tiny weights
    # nothing 9B-sized is allocated: every model built on the way is a shape-only meta model
    built = []
    init = LongLLaVAForConditionalGeneration.__init__

    def recording(self, *args, **kwargs):
        built.append(str(torch.get_default_device()))
        init(self, *args, **kwargs)

    monkeypatch.setattr(LongLLaVAForConditionalGeneration, "__init__", recording)
    with pytest.raises(CheckpointError, match="do not belong together"):
        Pipeline.from_pretrained(foreign)
    assert set(built) <= {"meta"}, built


class _Payload:
    """A pickle that would run a command if unpickled with weights_only=False."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_a_malicious_pickle_is_refused_without_running(pickle_only_checkpoint, tmp_path, monkeypatch):
    import pickle

    monkeypatch.chdir(tmp_path)
    (pickle_only_checkpoint / "pytorch_model.bin").write_bytes(pickle.dumps({"x": _Payload()}, protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        Pipeline.from_pretrained(pickle_only_checkpoint)  # not opted in: refused before reading
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        Pipeline.from_pretrained(pickle_only_checkpoint, allow_pickle=True)  # weights_only blocks it
    assert not (tmp_path / "PWNED").exists()


def test_a_folder_without_processor_files_is_refused_by_load_and_finetune(tiny_checkpoint, tmp_path, capsys):
    from longllava_sdk.cli import main

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes((tiny_checkpoint / name).read_bytes())
    with pytest.raises(CheckpointError, match="processor files"):
        Pipeline.from_pretrained(folder)
    assert main(["finetune", "--domain", "medical", "--model", str(folder), "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "processor files" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
