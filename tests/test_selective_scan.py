"""The SDK's selective scan (numba kernels and chunked torch path) against a plain sequential
reference, and the SDK's Mamba mixer that runs it.

The reference below is written independently of the implementation: one Python step per
token in float64, with autograd for the gradients. Tests marked with the ``backend`` fixture
run once per implementation (``numba``: the CPU fast path; ``torch``: the chunked fallback).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longllava_sdk.errors import InputError
from longllava_sdk.modeling import mamba_mixer, sequence_boundaries
from longllava_sdk.modeling.kernels import interface
from longllava_sdk.modeling.kernels import scan_torch as scan_module
from longllava_sdk.modeling.kernels.causal_conv1d import causal_conv1d_torch
from longllava_sdk.modeling.kernels.interface import BACKEND_ENV, selective_scan
from longllava_sdk.modeling.mamba_mixer import LongLLaVAMambaMixer, swap_mamba_mixers
from longllava_sdk.modeling.sequence_boundaries import mamba_sequence_boundaries, reset_mask_from_position_ids

TOL = 1e-4
BACKENDS = ["numba", "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The scan implementation under test (forced, so a silent fallback cannot pass as numba)."""
    return request.param


# --------------------------------------------------------------------------------------------
# Reference and helpers
# --------------------------------------------------------------------------------------------


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, reset_mask=None):
    """Sequential selective scan, one step per token. Returns (out, last_state)."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    bsz, dim, length = u.shape
    h = u.new_zeros(bsz, dim, A.shape[1]) if initial_state is None else initial_state
    ys = []
    for t in range(length):
        if reset_mask is not None:
            h = h * (~reset_mask[:, t]).to(h.dtype)[:, None, None]
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(bsz, dim, n, length, *, seed=0, use_D=True, use_z=True, use_bias=True,
                softplus=True, initial=False, resets=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)

    if softplus:
        delta = randn(bsz, dim, length, scale=0.5, shift=-1.0)
    else:  # without softplus the time steps must already be positive
        delta = (torch.rand(bsz, dim, length, generator=g, dtype=torch.float64) * 0.5 + 0.05).to(dtype)
    inputs = {
        "u": randn(bsz, dim, length),
        "delta": delta,
        "A": (-torch.exp(torch.randn(dim, n, generator=g, dtype=torch.float64) * 0.5)
              * torch.arange(1, n + 1, dtype=torch.float64)).to(dtype),
        "B": randn(bsz, n, length),
        "C": randn(bsz, n, length),
        "D": randn(dim) if use_D else None,
        "z": randn(bsz, dim, length) if use_z else None,
        "delta_bias": randn(dim, scale=0.3) if use_bias else None,
        "initial_state": randn(bsz, dim, n) if initial else None,
    }
    reset = None
    if resets:
        reset = torch.rand(bsz, length, generator=g) < 0.03
        reset[:, length // 2] = True
        reset[0, 0] = True
    for value in inputs.values():
        if value is not None:
            value.requires_grad_(True)
    return inputs, reset, softplus


def reference_scan_numpy(inputs, reset_mask, delta_softplus, g_out, g_last):
    """Same recurrence as :func:`reference_scan` in NumPy float64, with a hand-written
    step-by-step adjoint (fast enough for 16K steps). Returns (out, last_state, grads).

    Its gradients are checked against autograd on :func:`reference_scan` in
    ``test_numpy_reference_matches_autograd_reference``.
    """
    v = {k: (None if t is None else t.detach().double().numpy()) for k, t in inputs.items()}
    u, A, B, C, D, z = v["u"], v["A"], v["B"], v["C"], v["D"], v["z"]
    bsz, dim, length = u.shape
    dt_raw = v["delta"] + (0 if v["delta_bias"] is None else v["delta_bias"][:, None])
    dt = np.logaddexp(0.0, dt_raw) if delta_softplus else dt_raw
    keep = np.ones((bsz, length)) if reset_mask is None else (~reset_mask.numpy()).astype(np.float64)
    dA = np.exp(dt[..., None] * A[:, None, :]) * keep[:, None, :, None]  # (B, D, L, N)
    du = dt * u
    x = du[..., None] * B.transpose(0, 2, 1)[:, None]  # (B, D, L, N)
    h0 = np.zeros((bsz, dim, A.shape[1])) if v["initial_state"] is None else v["initial_state"]
    hs = np.empty_like(x)
    h = h0
    for t in range(length):
        h = dA[:, :, t] * h + x[:, :, t]
        hs[:, :, t] = h
    Ct = C.transpose(0, 2, 1)[:, None]  # (B, 1, L, N)
    y = (hs * Ct).sum(-1)
    pre = y if D is None else y + D[:, None] * u
    out = pre if z is None else pre / (1 + np.exp(-z)) * z

    g_out, g_last = g_out.numpy(), g_last.numpy()
    grads = {}
    if z is not None:
        sig = 1 / (1 + np.exp(-z))
        grads["z"] = g_out * pre * sig * (1 + z * (1 - sig))
        g_pre = g_out * z * sig
    else:
        g_pre = g_out
    g_u = np.zeros_like(u)
    if D is not None:
        grads["D"] = (g_pre * u).sum((0, 2))
        g_u += g_pre * D[:, None]
    q = g_pre[..., None] * Ct  # dL/dh_t from y_t
    G = np.empty_like(x)
    gh = g_last
    for t in range(length - 1, -1, -1):
        gh = gh + q[:, :, t]
        G[:, :, t] = gh
        gh = gh * dA[:, :, t]
    if v["initial_state"] is not None:
        grads["initial_state"] = gh
    grads["C"] = (hs * g_pre[..., None]).sum(1).transpose(0, 2, 1)
    h_prev = np.concatenate([h0[:, :, None], hs[:, :, :-1]], axis=2)
    g_dtA = G * h_prev * dA
    g_du = (G * B.transpose(0, 2, 1)[:, None]).sum(-1)
    grads["B"] = (G * du[..., None]).sum(1).transpose(0, 2, 1)
    grads["A"] = (g_dtA * dt[..., None]).sum((0, 2))
    g_dt = (g_dtA * A[:, None, :]).sum(-1) + g_du * u
    grads["u"] = g_u + g_du * dt
    if delta_softplus:
        g_dt = g_dt / (1 + np.exp(-dt_raw))
    grads["delta"] = g_dt
    if v["delta_bias"] is not None:
        grads["delta_bias"] = g_dt.sum((0, 2))
    as_torch = torch.from_numpy
    return as_torch(out), as_torch(h), {k: as_torch(np.ascontiguousarray(g)) for k, g in grads.items()}


def run_both(inputs, reset, softplus, chunk_size=64, seed=1, backend=None):
    """(out, last_state, grads) of a reference (float64) and of ours (float32 inputs).

    Up to 300 steps the reference is autograd through :func:`reference_scan`; longer
    sequences use :func:`reference_scan_numpy`.
    """
    names = [k for k, v in inputs.items() if v is not None]
    length = inputs["u"].shape[-1]
    g = torch.Generator().manual_seed(seed)
    bsz, dim, _ = inputs["u"].shape
    g_out = torch.randn(inputs["u"].shape, generator=g, dtype=torch.float64)
    g_last = torch.randn(bsz, dim, inputs["A"].shape[1], generator=g, dtype=torch.float64)
    if length <= 300:
        ref_out, ref_last = reference_scan(**inputs, delta_softplus=softplus, reset_mask=reset)
        ref_grads = dict(zip(names, torch.autograd.grad(
            (ref_out * g_out).sum() + (ref_last * g_last).sum(), [inputs[k] for k in names]
        )))
    else:
        ref_out, ref_last, ref_grads = reference_scan_numpy(inputs, reset, softplus, g_out, g_last)

    ours_in = {k: (None if v is None else v.detach().float().requires_grad_(True)) for k, v in inputs.items()}
    out, last = selective_scan(**ours_in, delta_softplus=softplus, return_last_state=True,
                               reset_mask=reset, chunk_size=chunk_size, backend=backend)
    ours_grads = torch.autograd.grad(
        (out.double() * g_out).sum() + (last.double() * g_last).sum(), [ours_in[k] for k in names]
    )
    return (ref_out, ref_last, ref_grads), (out, last, dict(zip(names, ours_grads)))


def assert_close_scaled(actual, expected, what):
    """max |actual - expected| <= TOL * max(1, max |expected|)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    scale = max(1.0, float(expected.abs().max()))
    err = float((actual - expected).abs().max())
    assert err <= TOL * scale, f"{what}: max error {err:.3g} > {TOL * scale:.3g}"


def check_against_reference(inputs, reset, softplus, chunk_size=64, backend=None):
    (r_out, r_last, r_grads), (o_out, o_last, o_grads) = run_both(
        inputs, reset, softplus, chunk_size, backend=backend
    )
    assert o_out.dtype == torch.float32
    assert_close_scaled(o_out, r_out, "output")
    assert_close_scaled(o_last, r_last, "last state")
    for name in r_grads:
        assert o_grads[name] is not None, f"no gradient for {name}"
        assert_close_scaled(o_grads[name], r_grads[name], f"grad {name}")


# --------------------------------------------------------------------------------------------
# Values, final states and gradients against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 3, 63, 64, 65, 127, 1000, 4097])
def test_matches_reference_across_lengths(length, backend):
    inputs, reset, softplus = make_inputs(2, 6, 4, length, seed=length, initial=True, resets=length > 3)
    check_against_reference(inputs, reset, softplus, backend=backend)


@pytest.mark.parametrize("length", [64, 65, 129])
def test_matches_reference_without_initial_state_or_resets(length, backend):
    inputs, reset, softplus = make_inputs(2, 6, 4, length, seed=7 * length)
    check_against_reference(inputs, reset, softplus, backend=backend)


OPTION_GRID = list(itertools.product([False, True], repeat=6))


@pytest.mark.parametrize("use_D,use_z,use_bias,softplus,initial,resets", OPTION_GRID)
def test_matches_reference_for_every_option(use_D, use_z, use_bias, softplus, initial, resets, backend):
    inputs, reset, softplus = make_inputs(
        2, 5, 3, 37, seed=11, use_D=use_D, use_z=use_z, use_bias=use_bias, softplus=softplus,
        initial=initial, resets=resets,
    )
    check_against_reference(inputs, reset, softplus, chunk_size=8, backend=backend)


@pytest.mark.parametrize("initial,resets,use_z", [(True, True, True), (False, False, False)])
def test_numpy_reference_matches_autograd_reference(initial, resets, use_z):
    inputs, reset, softplus = make_inputs(2, 4, 3, 40, seed=21, initial=initial, resets=resets, use_z=use_z)
    names = [k for k, v in inputs.items() if v is not None]
    g_out, g_last = torch.randn(2, 4, 40, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    out, last = reference_scan(**inputs, delta_softplus=softplus, reset_mask=reset)
    grads = torch.autograd.grad((out * g_out).sum() + (last * g_last).sum(), [inputs[k] for k in names])
    np_out, np_last, np_grads = reference_scan_numpy(inputs, reset, softplus, g_out, g_last)
    torch.testing.assert_close(np_out, out.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(np_last, last.detach(), rtol=1e-10, atol=1e-10)
    assert set(np_grads) == set(names)
    for name, grad in zip(names, grads):
        torch.testing.assert_close(np_grads[name], grad, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 16, 64, 100, 500])
def test_chunk_size_does_not_change_the_result(chunk_size, backend):
    inputs, reset, softplus = make_inputs(1, 4, 3, 257, seed=3, initial=True, resets=True)
    check_against_reference(inputs, reset, softplus, chunk_size=chunk_size, backend=backend)


def test_many_chunk_groups_match_one_group(monkeypatch):
    """With a tiny memory budget every chunk is its own group; results must not change."""
    inputs, reset, softplus = make_inputs(2, 6, 4, 300, seed=5, initial=True, resets=True)
    monkeypatch.setattr(scan_module, "MAX_GROUP_ELEMENTS", 1)
    check_against_reference(inputs, reset, softplus, chunk_size=16, backend="torch")
    monkeypatch.setattr(scan_module, "MAX_GROUP_ELEMENTS", 3 * 16 * 2 * 6 * 4)
    check_against_reference(inputs, reset, softplus, chunk_size=16, backend="torch")


def test_16k_tokens_match_reference(backend):
    inputs, reset, softplus = make_inputs(1, 3, 2, 16384, seed=16, initial=True, resets=True)
    check_against_reference(inputs, reset, softplus, backend=backend)


def test_16k_tokens_match_reference_without_initial_state_or_resets(backend):
    inputs, reset, softplus = make_inputs(1, 3, 2, 16384, seed=17)
    check_against_reference(inputs, reset, softplus, backend=backend)


def test_gradcheck_double():
    """float64 runs on the torch path (the numba kernels compute in float32)."""
    inputs, reset, softplus = make_inputs(2, 2, 2, 6, seed=2, initial=True, resets=True)
    names = list(inputs)

    def fn(*args):
        kwargs = dict(zip(names, args))
        out, last = selective_scan(**kwargs, delta_softplus=softplus, return_last_state=True,
                                   reset_mask=reset, chunk_size=4)
        return out, last

    assert torch.autograd.gradcheck(fn, tuple(inputs[k] for k in names), eps=1e-6, atol=1e-6)


def test_gradcheck_double_multiple_groups_no_options(monkeypatch):
    monkeypatch.setattr(scan_module, "MAX_GROUP_ELEMENTS", 1)
    inputs, _, _ = make_inputs(1, 2, 3, 6, seed=9, use_D=False, use_z=False, use_bias=False,
                               softplus=False)
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, chunk_size=4, return_last_state=True), args, eps=1e-6, atol=1e-6
    )


def test_strong_decay_stays_finite(backend):
    """dt * A of -1000 per step: any positive exponent (exp(-cumsum)) would overflow."""
    inputs, _, _ = make_inputs(1, 4, 3, 200, seed=4, softplus=False, use_bias=False, initial=True)
    with torch.no_grad():
        inputs["delta"].mul_(0).add_(20.0)
        inputs["A"].mul_(0).add_(-50.0)
    check_against_reference(inputs, None, False, backend=backend)


def test_large_time_steps_and_gates(backend):
    """softplus and silu far from 0 (|delta|, |z| up to ~40): no overflow, same values."""
    inputs, reset, softplus = make_inputs(2, 5, 3, 90, seed=13, initial=True, resets=True)
    with torch.no_grad():
        inputs["delta"].mul_(12.0)
        inputs["z"].mul_(12.0)
    check_against_reference(inputs, reset, softplus, backend=backend)


def test_bfloat16_inputs_keep_their_dtype(backend):
    inputs, reset, softplus = make_inputs(1, 4, 3, 70, seed=8, dtype=torch.float32)
    low = {k: (None if v is None else v.detach().to(torch.bfloat16).requires_grad_(True))
           for k, v in inputs.items()}
    low["A"] = inputs["A"].detach().requires_grad_(True)  # A stays float32 in Jamba
    out = selective_scan(**low, delta_softplus=softplus, backend=backend)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    for name, value in low.items():
        if value is not None:
            assert value.grad is not None and value.grad.dtype == value.dtype, name
    ref_out, _ = reference_scan(**{k: (None if v is None else v.detach().double()) for k, v in low.items()},
                                delta_softplus=softplus)
    assert (out.double() - ref_out).abs().max() < 0.05 * max(1.0, float(ref_out.abs().max()))


def test_autocast_does_not_lower_the_precision(backend):
    inputs, reset, softplus = make_inputs(2, 6, 4, 150, seed=12, initial=True, resets=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_against_reference(inputs, reset, softplus, backend=backend)


def test_inference_without_grad_and_return_shapes(backend):
    inputs, _, softplus = make_inputs(2, 4, 3, 10, seed=6, dtype=torch.float32)
    with torch.no_grad():
        out, last = selective_scan(**inputs, delta_softplus=softplus, return_last_state=True,
                                   backend=backend)
    assert out.shape == (2, 4, 10) and last.shape == (2, 4, 3)
    assert last.dtype == torch.float32 and not out.requires_grad


def test_bad_shapes_are_typed_errors():
    inputs, _, _ = make_inputs(2, 4, 3, 10, seed=6, dtype=torch.float32)
    with pytest.raises(InputError, match="B must have shape"):
        selective_scan(**{**inputs, "B": inputs["B"][:, :, :5]})
    with pytest.raises(InputError, match="A must be"):
        selective_scan(**{**inputs, "A": inputs["A"][:2]})
    with pytest.raises(InputError, match="reset_mask must have shape"):
        selective_scan(**inputs, reset_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(InputError, match="bool"):
        selective_scan(**inputs, reset_mask=torch.zeros(2, 10))
    with pytest.raises(InputError, match="chunk_size"):
        selective_scan(**inputs, chunk_size=0)
    with pytest.raises(InputError, match="length 0"):
        selective_scan(**{k: (v[..., :0] if k in ("u", "delta", "B", "C", "z") else v)
                          for k, v in inputs.items()})


# --------------------------------------------------------------------------------------------
# Plug-in point: transformers' Jamba
# --------------------------------------------------------------------------------------------

modeling_jamba = pytest.importorskip("transformers.models.jamba.modeling_jamba")


def tiny_jamba_config(**overrides):
    from transformers import JambaConfig

    kwargs = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_offset=4, attn_layer_period=8,
        expert_layer_offset=1, expert_layer_period=2, num_experts=4, num_experts_per_tok=2,
        mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(overrides)
    return JambaConfig(**kwargs)


def tiny_jamba(seed=0):
    from transformers import JambaForCausalLM

    torch.manual_seed(seed)
    model = JambaForCausalLM(tiny_jamba_config()).eval()
    # Random but non-trivial Mamba parameters (the default init leaves some at exact constants).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "mamba" in name and name.endswith(("D", "conv1d.bias")):
                p.normal_(0, 0.5)
    return model


def sdk_jamba(seed=0):
    """:func:`tiny_jamba` with the SDK's mixers swapped in (as LongLLaVA models get them)."""
    model = tiny_jamba(seed)
    assert swap_mamba_mixers(model) == 7
    return model


@pytest.mark.compat
def test_the_sdk_mixer_really_calls_the_sdk_scan(monkeypatch):
    """Count calls, and show that a deliberately different function changes the logits."""
    model = sdk_jamba()
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(0))
    calls = []

    def counting_scan(*args, **kwargs):
        calls.append(args[0].shape)
        return selective_scan(*args, **kwargs)

    monkeypatch.setattr(mamba_mixer, "selective_scan", counting_scan)
    with torch.no_grad():
        logits = model(ids).logits
    n_mamba = sum(t == "mamba" for t in model.config.layers_block_type)
    assert n_mamba == 7 and len(calls) == n_mamba
    assert all(shape == (1, 128, 40) for shape in calls)

    def zero_scan(u, *args, return_last_state=False, **kwargs):
        zeros = torch.zeros_like(u)
        return (zeros, zeros.new_zeros(u.shape[0], u.shape[1], 16)) if return_last_state else zeros

    monkeypatch.setattr(mamba_mixer, "selective_scan", zero_scan)
    with torch.no_grad():
        zeroed = model(ids).logits
    assert (zeroed - logits).abs().max() > 1e-3


def test_tiny_jamba_logits_and_gradients_match_transformers_fallback(backend, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    model = tiny_jamba(seed=1)
    ids = torch.randint(3, 128, (2, 100), generator=torch.Generator().manual_seed(1))

    def forward_backward():
        model.zero_grad()
        out = model(ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.logits.detach(), grads

    ref_logits, ref_grads = forward_backward()  # transformers' mixers
    swap_mamba_mixers(model)
    logits, grads = forward_backward()

    assert_close_scaled(logits, ref_logits, "logits")
    assert set(grads) == set(ref_grads)
    assert any("A_log" in n for n in grads)
    for name in ref_grads:
        assert_close_scaled(grads[name], ref_grads[name], f"grad {name}")


def test_generation_with_cache_still_matches_no_cache():
    model = sdk_jamba(seed=2)
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert cached.shape == (1, 18)
    assert torch.equal(cached, uncached)


# --------------------------------------------------------------------------------------------
# Packed samples: sequence boundaries
# --------------------------------------------------------------------------------------------


def test_packed_samples_do_not_leak_through_the_mamba_mixer(backend, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    torch.manual_seed(3)
    mixer = LongLLaVAMambaMixer(tiny_jamba_config(), layer_idx=0).eval()
    with torch.no_grad():
        mixer.conv1d.bias.normal_(0, 0.5)
    first, second = torch.randn(2, 23, 64), torch.randn(2, 17, 64)
    packed = torch.cat([first, second], dim=1)
    reset = torch.zeros(2, 40, dtype=torch.bool)
    reset[:, 0] = reset[:, 23] = True
    with torch.no_grad():
        separate = torch.cat([mixer(first), mixer(second)], dim=1)
        leaky = mixer(packed)
        with mamba_sequence_boundaries(reset):
            bounded = mixer(packed)
    assert (leaky[:, 23:] - separate[:, 23:]).abs().max() > 1e-3  # the leak is real
    torch.testing.assert_close(bounded, separate, atol=1e-5, rtol=1e-5)
    assert sequence_boundaries.current_reset_mask() is None  # context restored


@pytest.mark.compat
def test_gradient_checkpointing_keeps_the_boundaries(backend, monkeypatch):
    """The backward (and the checkpoint's recomputation) runs after the block has closed."""
    from torch.utils.checkpoint import checkpoint

    monkeypatch.setenv(BACKEND_ENV, backend)
    torch.manual_seed(5)
    mixer = LongLLaVAMambaMixer(tiny_jamba_config(), layer_idx=0)
    packed = torch.randn(1, 30, 64)
    reset = torch.zeros(1, 30, dtype=torch.bool)
    reset[0, 11] = True

    def grads(use_checkpoint):
        mixer.zero_grad()
        with mamba_sequence_boundaries(reset):
            if use_checkpoint:
                out = checkpoint(mixer, packed, use_reentrant=False,
                                 context_fn=sequence_boundaries.boundaries_checkpoint_context_fn)
            else:
                out = mixer(packed)
        out.pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in mixer.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def test_boundaries_in_the_conv_alone_match_per_sample_convs():
    torch.manual_seed(4)
    x, weight, bias = torch.randn(1, 6, 20), torch.randn(6, 4), torch.randn(6)
    reset = torch.zeros(1, 20, dtype=torch.bool)
    reset[0, [0, 2, 9]] = True  # segments 0:2, 2:9, 9:20

    def plain(seg):
        out = F.conv1d(seg, weight[:, None], bias, padding=3, groups=6)[..., : seg.shape[-1]]
        return F.silu(out)

    expected = torch.cat([plain(x[..., 0:2]), plain(x[..., 2:9]), plain(x[..., 9:20])], dim=-1)
    torch.testing.assert_close(causal_conv1d_torch(x, weight, bias, "silu", reset), expected)

    # With a cache the conv input carries 3 columns of left context before the new tokens.
    context = torch.randn(1, 6, 3)
    with_context = causal_conv1d_torch(torch.cat([context, x], -1), weight, bias, "silu", reset)
    torch.testing.assert_close(with_context[..., 3:], expected)


@pytest.mark.parametrize("length", [1, 2, 3, 4, 50])
def test_torch_conv_equals_transformers_conv(length):
    original = modeling_jamba.causal_conv1d_fn  # transformers' own: the SDK never replaces it
    torch.manual_seed(length)
    proj = torch.randn(2, length, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (original, causal_conv1d_torch):
        x = proj.transpose(1, 2).chunk(2, dim=1)[0]  # non-contiguous, as in the mixer
        out = fn(x, weight, bias, activation="silu")
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                    [proj, weight, bias])
        results.append((out, *grads))
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs)


def test_boundary_mask_must_match_the_layer_input():
    mixer = LongLLaVAMambaMixer(tiny_jamba_config(), layer_idx=0)
    with mamba_sequence_boundaries(torch.zeros(2, 11, dtype=torch.bool)):
        with pytest.raises(InputError, match="length 10"), torch.no_grad():
            mixer(torch.randn(2, 10, 64))
    with pytest.raises(InputError, match="reset_mask"):
        with mamba_sequence_boundaries(torch.zeros(11, dtype=torch.bool)):
            pass


def test_reset_mask_from_position_ids():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert reset_mask_from_position_ids(position_ids).tolist() == [
        [True, False, False, True, False, True, False, False, False]
    ]


def test_cpu_tensors_never_go_to_the_cuda_kernels(monkeypatch):
    def kernel_must_not_run(*args, **kwargs):
        raise AssertionError("a CUDA package kernel was called for CPU tensors")

    monkeypatch.setattr(interface, "_cuda_function", lambda operation: kernel_must_not_run)
    inputs, _, softplus = make_inputs(1, 4, 3, 9, seed=6, dtype=torch.float32)
    out = selective_scan(**{k: v for k, v in inputs.items() if k != "initial_state"}, delta_softplus=softplus)
    assert out.shape == (1, 4, 9)
    x, weight = torch.randn(1, 4, 9), torch.randn(4, 4)
    assert interface.causal_conv1d(x, weight, activation="silu").shape == (1, 4, 9)
