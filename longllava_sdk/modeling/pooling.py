"""Image-token pooling between the CLIP tower and the projector (paper §3.1, ablation §4.5).

CLIP ViT-L/14 at 336 px yields a 24 x 24 grid of 576 patch features; LongLLaVA pools it to
12 x 12 = 144 tokens per image, which is what lets ~1000 images fit one context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pool_image_features(features: torch.Tensor, mode: str, tokens_per_image: int) -> torch.Tensor:
    """Pool patch features to ``tokens_per_image`` tokens per image.

    Args:
        features: ``(N, P, C)`` patch features (CLS already dropped), ``P`` a square number.
        mode: ``"2d"`` bilinear resize of the ``sqrt(P) x sqrt(P)`` grid to
            ``sqrt(T) x sqrt(T)`` (the paper's bilinear pooling; exactly the official
            ``F.interpolate(..., "bilinear", align_corners=False)``, which at a 2x factor is
            a 2x2 average up to float rounding), ``"1d"`` linear interpolation along the
            flattened patch sequence (exactly the official ``F.interpolate(..., mode="linear",
            align_corners=False)`` of ``clip_encoder.py``, used by the released alignment
            stage), ``"none"`` identity.
        tokens_per_image: ``T``, tokens per image after pooling.

    Returns:
        ``(N, T, C)`` pooled features, row-major over the pooled grid for ``"2d"``.
    """
    n, p, c = features.shape
    if mode == "none":
        return features
    if mode == "1d":
        # (N, P, C) -> (N, C, P) -> linear resample along P -> (N, T, C)
        pooled = F.interpolate(features.transpose(1, 2).float(), size=tokens_per_image, mode="linear",
                               align_corners=False)
        return pooled.to(features.dtype).transpose(1, 2)
    if mode != "2d":
        raise ValueError(f"unknown pooling mode {mode!r}")
    side_in = math.isqrt(p)
    side_out = math.isqrt(tokens_per_image)
    if side_in * side_in != p or side_out * side_out != tokens_per_image:
        raise ValueError(f"2d pooling needs square token counts, got {p} -> {tokens_per_image}")
    grid = features.transpose(1, 2).reshape(n, c, side_in, side_in)
    # Interpolate in float32: bf16 bilinear weights drift from the trained model's numbers.
    pooled = F.interpolate(grid.float(), size=(side_out, side_out), mode="bilinear", align_corners=False)
    return pooled.to(features.dtype).flatten(2).transpose(1, 2)
