"""Int8: what is quantized, what is kept, agreement with float32, loading through Pipeline."""

from __future__ import annotations

import warnings

import pytest
import torch

from longllava_sdk.errors import CheckpointError, ConfigError
from longllava_sdk.quantization import quantize_model, skipped_module


def test_int8_quantizes_the_transformer_parts_and_keeps_mamba_vision_projector(tiny_checkpoint):
    from longllava_sdk.model_folders import load_model

    model, _ = load_model(tiny_checkpoint)
    ids = torch.randint(3, 500, (2, 40))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a quiet console: nothing a user cannot act on
        report = quantize_model(model)
    assert report.quantized and all(not skipped_module(n) for n in report.quantized)
    assert any(".self_attn.q_proj" in n for n in report.quantized)
    assert any(".mamba." in n for n in report.kept) and all(skipped_module(n) for n in report.kept)
    for name, module in model.named_modules():
        if name.endswith("._packed_params"):
            continue  # the packed weight inside a quantized linear
        quantized = type(module).__module__.startswith("torch.ao.nn.quantized")
        assert quantized == (name in report.quantized), name
    assert isinstance(model.language_model.model.layers[0].mamba.in_proj, torch.nn.Linear)  # Mamba kept
    assert isinstance(model.projector.linear_1, torch.nn.Linear)
    assert report.bytes_after < report.bytes_before
    with torch.no_grad():
        quantized = model(input_ids=ids).logits
    error = (quantized - reference).abs().max() / reference.abs().max()
    assert error < 0.1, error  # int8 rounding, not a broken model
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8


def test_pipeline_loads_int8_and_generates(tiny_checkpoint, rgb_images):
    from longllava_sdk import Pipeline

    pipe = Pipeline.from_pretrained(tiny_checkpoint, device="cpu", quantize="int8")
    assert pipe.model.config.quantization == {"mode": "int8", "backend": "torch-dynamic"}
    assert isinstance(pipe("What is shown?", images=rgb_images[:1], max_new_tokens=4), str)
    with pytest.raises(CheckpointError, match="int4"):
        Pipeline.from_pretrained(tiny_checkpoint, device="cpu", quantize="int4")


def test_the_cuda_backend_is_bitsandbytes_with_the_same_skips(monkeypatch):
    """No GPU here: check the configuration the CUDA path loads with, and its missing-package error."""
    import sys
    import types

    from longllava_sdk.errors import MissingDependencyError
    from longllava_sdk.quantization import SKIPPED, bitsandbytes_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # "not installed"
    with pytest.raises(MissingDependencyError, match="pip install bitsandbytes"):
        bitsandbytes_config()
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    config = bitsandbytes_config()
    assert config.load_in_8bit and set(config.llm_int8_skip_modules) == set(SKIPPED)


def test_unknown_mode_and_gpu_models_are_refused(tiny_model):
    with pytest.raises(ConfigError, match="int4"):
        quantize_model(tiny_model, "int4")
