"""The numba fast path of the selective scan: dispatch, fallback, layouts, kernel details.

Values are checked against the float64 sequential reference of test_selective_scan.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from longllava_sdk.errors import ConfigError, InputError
from longllava_sdk.modeling.kernels import interface
from longllava_sdk.modeling.kernels import scan_numba
from longllava_sdk.modeling.kernels.interface import BACKEND_ENV, selective_scan, selective_scan_backend
from test_selective_scan import (
    assert_close_scaled,
    check_against_reference,
    make_inputs,
    reference_scan,
    tiny_jamba_config,
)

import numba  # noqa: E402,F401  (a dependency of the package: a missing numba must fail, not skip)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def numba_calls(monkeypatch):
    """Count the calls that reach the numba path."""
    calls = []
    real = scan_numba.selective_scan_numba

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_numba, "selective_scan_numba", counting)
    return calls


@pytest.fixture
def auto_backend(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)


# --------------------------------------------------------------------------------------------
# Dispatch and fallback
# --------------------------------------------------------------------------------------------


def test_numba_is_the_default_on_cpu(numba_calls, auto_backend):
    assert selective_scan_backend() == "numba-cpu"
    assert selective_scan_backend("cpu", torch.bfloat16) == "numba-cpu"
    inputs, reset, softplus = make_inputs(1, 4, 3, 20, seed=1, dtype=torch.float32)
    selective_scan(**inputs, delta_softplus=softplus, reset_mask=reset)
    assert numba_calls == [(1, 4, 20)]
    # and through the SDK's Mamba mixer
    from longllava_sdk.modeling.mamba_mixer import LongLLaVAMambaMixer

    with torch.no_grad():
        LongLLaVAMambaMixer(tiny_jamba_config(), layer_idx=0)(torch.randn(1, 20, 64))
    assert numba_calls[1:] == [(1, 128, 20)]


def test_float64_and_forced_torch_stay_on_the_torch_path(numba_calls, monkeypatch, auto_backend):
    inputs, reset, softplus = make_inputs(1, 4, 3, 20, seed=2)  # float64
    selective_scan(**inputs, delta_softplus=softplus, reset_mask=reset)
    assert selective_scan_backend("cpu", torch.float64) == "torch-chunked"
    with pytest.raises(InputError, match="float64"):
        selective_scan(**inputs, delta_softplus=softplus, backend="numba")

    low = {k: (None if v is None else v.detach().float()) for k, v in inputs.items()}
    selective_scan(**low, delta_softplus=softplus, backend="torch")
    monkeypatch.setenv(BACKEND_ENV, "torch")
    selective_scan(**low, delta_softplus=softplus)
    assert selective_scan_backend() == "torch-chunked"
    assert numba_calls == []
    monkeypatch.setenv(BACKEND_ENV, "numba")
    selective_scan(**low, delta_softplus=softplus)
    assert len(numba_calls) == 1
    monkeypatch.setenv(BACKEND_ENV, "fast")
    with pytest.raises(ConfigError, match=BACKEND_ENV):
        selective_scan(**low)
    with pytest.raises(ConfigError, match="backend"):
        selective_scan(**low, backend="cuda")


def test_falls_back_to_torch_when_numba_cannot_be_imported(numba_calls, monkeypatch, auto_backend):
    monkeypatch.setattr(scan_numba, "_import_kernels",
                        lambda: (None, "numba cannot be imported (ModuleNotFoundError: test)"))
    assert selective_scan_backend() == "torch-chunked"
    inputs, reset, softplus = make_inputs(2, 5, 3, 70, seed=3, initial=True, resets=True)
    check_against_reference(inputs, reset, softplus)  # auto -> torch, still correct
    assert numba_calls == []
    with pytest.raises(InputError, match="numba cannot be imported"):
        selective_scan(**{k: (None if v is None else v.detach().float()) for k, v in inputs.items()},
                       backend="numba")


def test_a_kernel_that_cannot_compile_falls_back_to_torch(numba_calls, monkeypatch, caplog, auto_backend):
    """numba failing to build the kernels on some machine: logged once, torch from then on."""
    import numba

    def broken_forward(*args, **kwargs):
        raise numba.core.errors.TypingError("simulated: no implementation of function")

    monkeypatch.setattr(scan_numba, "_compiled", set())
    monkeypatch.setattr(scan_numba, "_compile_failure", None)
    monkeypatch.setattr(scan_numba, "_forward", broken_forward)
    inputs, reset, softplus = make_inputs(2, 5, 3, 40, seed=4, initial=True, resets=True)
    with caplog.at_level("WARNING", logger=scan_numba.__name__):
        check_against_reference(inputs, reset, softplus)  # auto: falls back, still correct
        check_against_reference(inputs, reset, softplus)
    failures = [r for r in caplog.records if "failed to compile" in r.getMessage()]
    assert len(failures) == 1 and "simulated" in failures[0].getMessage()
    assert len(numba_calls) == 1  # the first call tried numba, the second went straight to torch
    assert selective_scan_backend() == "torch-chunked"
    with pytest.raises(InputError, match="failed to compile"):
        selective_scan(**{k: (None if v is None else v.detach().float()) for k, v in inputs.items()},
                       backend="numba")


def test_backend_names_for_cuda(monkeypatch, auto_backend):
    assert selective_scan_backend("cuda") == "torch-chunked"  # this module's path off the CPU
    assert selective_scan_backend("meta") == "torch-chunked"
    monkeypatch.setattr(interface, "_package_importable", lambda name: False)
    assert interface.kernel_report("cuda")["selective_scan"].startswith("SDK chunked scan")
    monkeypatch.setattr(interface, "_package_importable", lambda name: True)
    assert interface.kernel_report("cuda")["selective_scan"].startswith("mamba-ssm CUDA kernel")


def test_non_cpu_tensors_are_not_numba_inputs():
    reason = scan_numba.numba_unavailable_reason(torch.empty(2, device="meta"))
    assert reason is not None and "meta" in reason
    assert scan_numba.numba_unavailable_reason(torch.empty(2), None) is None


# --------------------------------------------------------------------------------------------
# Memory layouts, sizes, threads
# --------------------------------------------------------------------------------------------


def _jamba_layout(inputs, length):
    """The same values in the layouts transformers' Jamba mixer passes: delta, z, B, C as
    (B, D, L) views of time-major (B, L, .) memory (z a half of a wider projection), u a
    slice of a longer conv output."""
    out = dict(inputs)
    for name in ("delta", "B", "C"):
        out[name] = inputs[name].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    z = inputs["z"].detach()
    wide = torch.cat([torch.randn_like(z), z], dim=1)  # (B, 2D, L): [x | z] like in_proj
    wide = wide.transpose(1, 2).contiguous().requires_grad_(True)  # (B, L, 2D) memory
    out["z"] = wide.transpose(1, 2).chunk(2, dim=1)[1]
    u = inputs["u"].detach()
    padded = torch.cat([u, torch.randn(u.shape[0], u.shape[1], 3, dtype=u.dtype)], dim=-1)
    out["u"] = padded.requires_grad_(True)[..., :length]
    return out, (wide, padded)


def test_jamba_layouts_are_read_in_place_and_match(auto_backend):
    bsz, dim, n, length = 2, 20, 4, 150
    inputs, reset, softplus = make_inputs(bsz, dim, n, length, seed=5, initial=True, resets=True,
                                          dtype=torch.float32)
    laid, leaves = _jamba_layout(inputs, length)
    assert laid["delta"].stride(1) == 1 and laid["z"].stride(1) == 1 and laid["u"].stride(2) == 1
    assert not laid["z"].is_contiguous() and not laid["u"].is_contiguous()
    out, last = selective_scan(**laid, delta_softplus=softplus, return_last_state=True, reset_mask=reset,
                               backend="numba")
    ref_out, ref_last = reference_scan(**{k: (None if v is None else v.detach().double())
                                          for k, v in inputs.items()},
                                       delta_softplus=softplus, reset_mask=reset)
    assert_close_scaled(out, ref_out, "output")
    assert_close_scaled(last, ref_last, "last state")
    # gradients flow back into the wide projection and the padded conv output
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * g).sum().backward()
    plain = {k: (None if v is None else v.detach().double().requires_grad_(True)) for k, v in inputs.items()}
    ref_out, _ = reference_scan(**plain, delta_softplus=softplus, reset_mask=reset)
    (ref_out * g.double()).sum().backward()
    wide, padded = leaves
    assert_close_scaled(wide.grad.transpose(1, 2)[:, dim:], plain["z"].grad, "grad z")
    assert_close_scaled(wide.grad.transpose(1, 2)[:, :dim], torch.zeros(bsz, dim, length), "grad x half")
    assert_close_scaled(padded.grad[..., :length], plain["u"].grad, "grad u")
    for name in ("delta", "B", "C", "A", "D", "delta_bias", "initial_state"):
        assert_close_scaled(laid[name].grad, plain[name].grad, f"grad {name}")


def test_arbitrary_strides(auto_backend):
    """Neither time- nor channel-contiguous inputs (every other element of a bigger tensor)."""
    inputs, reset, softplus = make_inputs(2, 6, 4, 90, seed=6, initial=True, resets=True, dtype=torch.float32)
    strided = {}
    for name in ("u", "delta", "z"):
        big = torch.zeros(2, 12, 180)
        big[:, ::2, ::2] = inputs[name].detach()
        strided[name] = big[:, ::2, ::2]
        assert strided[name].stride() == (12 * 180, 360, 2)
    with torch.no_grad():
        out = selective_scan(**{**inputs, **strided}, delta_softplus=softplus, reset_mask=reset,
                             backend="numba")
        ref, _ = reference_scan(**{k: (None if v is None else v.detach().double()) for k, v in inputs.items()},
                                delta_softplus=softplus, reset_mask=reset)
    assert_close_scaled(out, ref, "output")


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dim", [1, 17, 150])
def test_channel_blocks_and_threads(dim, threads, monkeypatch):
    """Channel counts that leave partial blocks, several blocks per thread, small blocks."""
    used = []
    real_run = scan_numba._run

    def recording_run(kernel, n_threads, *args):
        used.append(n_threads)
        return real_run(kernel, n_threads, *args)

    monkeypatch.setattr(scan_numba, "_run", recording_run)
    monkeypatch.setattr(scan_numba, "MIN_WORK_PER_THREAD", 1)  # small problems, all threads
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs, reset, softplus = make_inputs(3, dim, 5, 77, seed=dim, initial=True, resets=True)
        check_against_reference(inputs, reset, softplus, chunk_size=16, backend="numba")
        monkeypatch.setattr(scan_numba, "FORWARD_WIDTH", 16)
        monkeypatch.setattr(scan_numba, "BACKWARD_WIDTH", 16)
        check_against_reference(inputs, reset, softplus, chunk_size=16, backend="numba")
        assert torch.get_num_threads() == threads  # numba's OpenMP start-up must not change it
    finally:
        torch.set_num_threads(previous)
    assert used and set(used) == {threads}


def test_small_problems_use_one_thread(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert scan_numba._threads(1000) == 1
    assert scan_numba._threads(3 * scan_numba.MIN_WORK_PER_THREAD) == min(
        3, scan_numba._numba_max_threads())


def test_gradient_from_only_one_output():
    """Losses that use only ``out`` or only the last state (the other gradient is None)."""
    inputs, reset, softplus = make_inputs(2, 5, 3, 40, seed=8, initial=True, resets=True, dtype=torch.float32)
    for pick in (0, 1):
        grads = {}
        for be in ("numba", "torch"):
            leaves = {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}
            result = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True,
                                    reset_mask=reset, backend=be)
            result[pick].pow(2).sum().backward()
            grads[be] = {k: v.grad for k, v in leaves.items() if v is not None}
        for name, g in grads["torch"].items():
            assert_close_scaled(grads["numba"][name], g, f"grad {name} (output {pick})")


def test_only_some_inputs_require_grad():
    inputs, _, softplus = make_inputs(1, 4, 3, 30, seed=9, dtype=torch.float32)
    plain = {k: (None if v is None else v.detach()) for k, v in inputs.items()}
    u = plain["u"].clone().requires_grad_(True)
    out = selective_scan(**{**plain, "u": u}, delta_softplus=softplus, backend="numba")
    assert out.requires_grad
    out.sum().backward()
    u_ref = plain["u"].clone().requires_grad_(True)
    selective_scan(**{**plain, "u": u_ref}, delta_softplus=softplus, backend="torch").sum().backward()
    assert_close_scaled(u.grad, u_ref.grad, "grad u")


def test_each_kernel_compiles_once():
    """Every call hands the kernels the same argument types, so numba compiles each once."""
    from longllava_sdk.modeling.kernels import scan_numba_kernels as kernels

    for dtype in (torch.float32, torch.bfloat16):
        for initial, resets, use_z in ((False, False, False), (True, True, True)):
            inputs, reset, softplus = make_inputs(2, 6, 3, 33, seed=10, dtype=dtype, initial=initial,
                                                  resets=resets, use_z=use_z, use_D=use_z, use_bias=use_z)
            if dtype == torch.bfloat16:
                inputs["A"] = inputs["A"].detach().float().requires_grad_(True)
            out, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True,
                                       reset_mask=reset, backend="numba")
            (out.float().sum() + last.sum()).backward()
            with torch.no_grad():
                selective_scan(**inputs, delta_softplus=softplus, reset_mask=reset, backend="numba")
    assert len(kernels.scan_forward.signatures) == 1
    assert len(kernels.scan_backward.signatures) == 1


# --------------------------------------------------------------------------------------------
# Kernel pieces
# --------------------------------------------------------------------------------------------


def test_vectorisable_exp_and_log1p_are_float32_accurate():
    from longllava_sdk.modeling.kernels.scan_numba_kernels import exp_f32, log1p_unit_f32

    xs = np.concatenate([np.linspace(-87.0, 0.0, 1500), np.linspace(0.0, 80.0, 300),
                         -np.logspace(-8, 0, 100), [0.0, -1e-30]]).astype(np.float32)
    for x in xs:
        got, want = float(exp_f32(x)), math.exp(float(x))
        assert abs(got - want) <= 3e-7 * want, (x, got, want)
    vs = np.concatenate([np.linspace(0.0, 1.0, 1000), np.logspace(-30, 0, 200)]).astype(np.float32)
    for v in vs:
        got, want = float(log1p_unit_f32(v)), math.log1p(float(v))
        assert abs(got - want) <= 3e-7 * max(want, 1e-38), (v, got, want)


def test_jit_falls_back_to_no_cache_where_numba_cannot_cache():
    from longllava_sdk.modeling.kernels.scan_numba_kernels import jit

    namespace = {}
    exec(compile("def add_one(x):\n    return x + 1\n", "<generated>", "exec"), namespace)
    compiled = jit()(namespace["add_one"])  # cache=True would raise: no file to cache beside
    assert compiled(41) == 42
    assert compiled._cache.__class__.__name__ == "NullCache"


def test_first_call_compiles_without_warnings_and_fills_the_cache(tmp_path):
    """A fresh process with an empty numba cache: nothing on stderr, kernels cached."""
    script = textwrap.dedent("""
        import torch
        from longllava_sdk.modeling.kernels import selective_scan, selective_scan_backend
        assert selective_scan_backend() == "numba-cpu"
        g = torch.Generator().manual_seed(0)
        u, delta, z = (torch.randn(1, 8, 40, generator=g, requires_grad=True) for _ in range(3))
        A = -torch.rand(8, 4, generator=g) - 0.5
        B, C = torch.randn(1, 4, 40, generator=g), torch.randn(1, 4, 40, generator=g)
        out = selective_scan(u, delta, A, B, C, torch.ones(8), z, torch.zeros(8), True)
        out.sum().backward()
        print("ok", float(out.detach().sum()))
    """)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONWARNINGS": "default"}
    env.pop(BACKEND_ENV, None)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok"), done.stdout
    assert done.stderr == ""
    cached = {p.name.split("-")[0] for p in (tmp_path / "cache").rglob("*.nbi")}
    assert {"scan_numba_kernels.scan_forward", "scan_numba_kernels.scan_backward"} <= cached


def test_inputs_are_not_modified():
    inputs, reset, softplus = make_inputs(2, 6, 3, 50, seed=12, initial=True, resets=True, dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in inputs.items() if v is not None}
    out, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True, reset_mask=reset,
                               backend="numba")
    (out.sum() + last.sum()).backward()
    for name, value in before.items():
        assert torch.equal(inputs[name].detach(), value), name


def test_warnings_are_not_raised_on_warm_calls():
    inputs, _, softplus = make_inputs(1, 4, 3, 12, seed=13, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = selective_scan(**inputs, delta_softplus=softplus, backend="numba")
        out.sum().backward()
