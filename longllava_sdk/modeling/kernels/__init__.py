"""The Mamba kernels: selective scan, causal conv1d and the decode step.

``interface`` picks an implementation per call (CUDA packages, numba CPU kernels, torch);
``scan_torch`` (chunked torch scan, the reference / fallback), ``scan_numba`` (torch glue and
autograd for) ``scan_numba_kernels`` (the jitted CPU kernels), ``causal_conv1d`` and
``selective_state_update`` (torch) hold one implementation each. Importing this package does
not import numba.
"""

from .interface import (
    BACKEND_ENV,
    announce_kernels,
    causal_conv1d,
    causal_conv1d_update,
    describe_kernels,
    kernel_report,
    selective_scan,
    selective_scan_backend,
    selective_state_update,
)

__all__ = [
    "BACKEND_ENV",
    "announce_kernels",
    "causal_conv1d",
    "causal_conv1d_update",
    "describe_kernels",
    "kernel_report",
    "selective_scan",
    "selective_scan_backend",
    "selective_state_update",
]
