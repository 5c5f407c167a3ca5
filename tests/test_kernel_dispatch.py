"""transformers' Jamba mixer really runs the SDK's Mamba kernels.

The SDK plugs in by replacing module attributes of ``transformers.models.jamba.modeling_jamba``
(see ``longllava_sdk/modeling/mamba_kernels.py``). If a transformers upgrade stops looking
those names up at call time, the model silently falls back to transformers' sequential scan
(~50x slower training) and loses packed-sample boundaries: these tests fail instead.
"""

from __future__ import annotations

import functools
import importlib

import pytest
import torch

from longllava_sdk.modeling import mamba_kernels

pytestmark = pytest.mark.compat

JAMBA = importlib.import_module("transformers.models.jamba.modeling_jamba")


class _Calls:
    """Counting wrappers placed where the mixer looks its functions up (and inside the SDK)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        for name in mamba_kernels._PATCHED_NAMES:
            dispatcher = getattr(JAMBA, name)
            # the SDK is what the mixer will find under that name...
            assert dispatcher is mamba_kernels._replacements[name], name
            monkeypatch.setattr(JAMBA, name, self._counting(name, dispatcher))
        # ...and the SDK's own implementations are what the dispatchers run on this CPU
        for name in ("selective_scan", "causal_conv1d_torch"):
            monkeypatch.setattr(mamba_kernels, name, self._counting(name, getattr(mamba_kernels, name)))

    def _counting(self, name, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            return func(*args, **kwargs)

        return wrapper


def _mamba_layers(model) -> int:
    return model.config.text_config.layers_block_type.count("mamba")


def test_forward_runs_the_sdk_scan_in_every_mamba_layer(tiny_model, monkeypatch):
    calls = _Calls(monkeypatch)
    ids = torch.randint(3, 500, (2, 37))
    with torch.no_grad():
        tiny_model(input_ids=ids)
    layers = _mamba_layers(tiny_model)
    assert calls.counts.get("mamba_selective_scan") == layers
    assert calls.counts.get("selective_scan") == layers  # the SDK's chunked scan, not mamba-ssm / the loop
    assert calls.counts.get("causal_conv1d_fn") == layers
    assert "causal_conv1d_torch" not in calls.counts  # no boundaries: plain conv1d


def test_packed_forward_runs_the_boundary_aware_conv(tiny_model, monkeypatch):
    calls = _Calls(monkeypatch)
    ids = torch.randint(3, 500, (1, 40))
    reset = torch.zeros(1, 40, dtype=torch.bool)
    reset[0, [0, 19]] = True
    with torch.no_grad():
        tiny_model(input_ids=ids, reset_mask=reset)
    layers = _mamba_layers(tiny_model)
    assert calls.counts.get("causal_conv1d_torch") == layers
    assert calls.counts.get("selective_scan") == layers


def test_decode_steps_run_the_sdk_single_step_kernels(tiny_model, monkeypatch):
    calls = _Calls(monkeypatch)
    ids = torch.randint(3, 500, (1, 12))
    with torch.no_grad():
        tiny_model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    layers = _mamba_layers(tiny_model)
    assert calls.counts.get("mamba_selective_state_update") == 3 * layers  # steps after the prefill
    assert calls.counts.get("causal_conv1d_update") == 3 * layers
    assert calls.counts.get("mamba_selective_scan") == layers  # the prefill


def test_single_step_kernels_equal_transformers_reference():
    """The SDK's decode kernels compute what transformers' reference functions compute."""
    from transformers.activations import ACT2FN

    torch.manual_seed(0)
    batch, channels, state_size, kernel = 2, 6, 4, 4
    conv_state = torch.randn(batch, channels, kernel)
    new = torch.randn(batch, channels, 1)
    weight, bias = torch.randn(channels, kernel), torch.randn(channels)
    ours_state = conv_state.clone()
    ours = mamba_kernels.dispatch_causal_conv1d_update(new, ours_state, weight, bias, activation="silu")
    window = torch.cat([conv_state, new], dim=-1)
    expected = ACT2FN["silu"]((window[..., 1:] * weight).sum(-1) + bias).unsqueeze(-1)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(ours_state, window[..., 1:])

    ssm = torch.randn(batch, channels, state_size)
    x, dt, z = torch.randn(batch, channels), torch.randn(batch, channels), torch.randn(batch, channels)
    A = -torch.rand(channels, state_size)
    B, C = torch.randn(batch, state_size), torch.randn(batch, state_size)
    D, dt_bias = torch.randn(channels), torch.randn(channels)
    ours_ssm = ssm.clone()
    out = mamba_kernels.dispatch_selective_state_update(ours_ssm, x, dt, A, B, C, D, z=z, dt_bias=dt_bias,
                                                        dt_softplus=True)
    delta = torch.nn.functional.softplus(dt + dt_bias)
    state = ssm * torch.exp(delta[..., None] * A) + (delta * x)[..., None] * B[:, None, :]
    expected = ((state * C[:, None, :]).sum(-1) + x * D) * torch.nn.functional.silu(z)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ours_ssm, state)


def test_kernel_report_names_the_cpu_paths(tiny_model):  # the model's construction installs the kernels
    report = mamba_kernels.kernel_report("cpu")
    assert report["installed"] == "yes"
    assert report["selective_scan"].startswith("SDK numba scan")  # numba is a dependency: the CPU default
    assert report["causal_conv1d"].startswith("torch conv1d")
