"""The SDK's Mamba mixer really runs the SDK's kernels, on each of its paths.

``LongLLaVAMambaMixer`` (longllava_sdk/modeling/mamba_mixer.py) calls the kernel interface
(longllava_sdk/modeling/kernels/interface.py), which picks an implementation per call. These
tests count the calls at both levels inside real forwards, a packed forward and decoding, so a
path that silently bypasses the SDK's scan (~50x slower training, no packed-sample
boundaries) fails here.
"""

from __future__ import annotations

import functools

import pytest
import torch

from longllava_sdk.modeling import mamba_mixer
from longllava_sdk.modeling.kernels import interface

pytestmark = pytest.mark.compat

_MIXER_CALLS = ("selective_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update")
_IMPLEMENTATIONS = ("causal_conv1d_torch",)


class _Calls:
    """Counting wrappers where the mixer looks its kernels up, and on the implementations behind them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        for name in _MIXER_CALLS:
            monkeypatch.setattr(mamba_mixer, name, self._counting(name, getattr(mamba_mixer, name)))
        for name in _IMPLEMENTATIONS:
            monkeypatch.setattr(interface, name, self._counting(name, getattr(interface, name)))
        numba_scan = interface.scan_numba.selective_scan_numba
        monkeypatch.setattr(interface.scan_numba, "selective_scan_numba", self._counting("numba", numba_scan))

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
    assert calls.counts.get("selective_scan") == layers
    assert calls.counts.get("numba") == layers  # the SDK's numba scan, not mamba-ssm / transformers' loop
    assert calls.counts.get("causal_conv1d") == layers
    assert calls.counts.get("causal_conv1d_torch") == layers


def test_packed_forward_passes_the_boundaries_to_the_kernels(tiny_model, monkeypatch):
    seen = []
    real = interface.causal_conv1d_torch
    monkeypatch.setattr(interface, "causal_conv1d_torch",
                        lambda *a, reset_mask=None, **k: seen.append(reset_mask) or real(*a, reset_mask=reset_mask, **k))
    ids = torch.randint(3, 500, (1, 40))
    reset = torch.zeros(1, 40, dtype=torch.bool)
    reset[0, [0, 19]] = True
    with torch.no_grad():
        tiny_model(input_ids=ids, reset_mask=reset)
    assert len(seen) == _mamba_layers(tiny_model)
    assert all(mask is not None and torch.equal(mask, reset) for mask in seen)


def test_decode_steps_run_the_sdk_single_step_kernels(tiny_model, monkeypatch):
    calls = _Calls(monkeypatch)
    ids = torch.randint(3, 500, (1, 12))
    with torch.no_grad():
        tiny_model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    layers = _mamba_layers(tiny_model)
    assert calls.counts.get("selective_state_update") == 3 * layers  # steps after the prefill
    assert calls.counts.get("causal_conv1d_update") == 3 * layers
    assert calls.counts.get("selective_scan") == layers  # the prefill


def test_single_step_kernels_equal_transformers_reference():
    """The SDK's decode kernels compute what transformers' reference functions compute."""
    from transformers.activations import ACT2FN

    torch.manual_seed(0)
    batch, channels, state_size, kernel = 2, 6, 4, 4
    conv_state = torch.randn(batch, channels, kernel)
    new = torch.randn(batch, channels, 1)
    weight, bias = torch.randn(channels, kernel), torch.randn(channels)
    ours_state = conv_state.clone()
    ours = interface.causal_conv1d_update(new, ours_state, weight, bias, activation="silu")
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
    out = interface.selective_state_update(ours_ssm, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=True)
    delta = torch.nn.functional.softplus(dt + dt_bias)
    state = ssm * torch.exp(delta[..., None] * A) + (delta * x)[..., None] * B[:, None, :]
    expected = ((state * C[:, None, :]).sum(-1) + x * D) * torch.nn.functional.silu(z)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ours_ssm, state)


def test_kernel_report_names_the_cpu_paths():
    report = interface.kernel_report("cpu")
    assert report["selective_scan"].startswith("SDK numba scan")  # numba is a dependency: the CPU default
    assert report["causal_conv1d"].startswith("torch conv1d")
