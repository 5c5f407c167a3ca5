"""Sizes in bytes, one rule everywhere: SI prefixes are powers of 10, IEC prefixes powers of 2.

``5GB`` is 5 x 10^9 bytes and ``5GiB`` is 5 x 2^30 bytes, whether it is a shard size
(``convert-official --max-shard-size``, as in transformers' ``max_shard_size``), a GPU's
memory (``plan --gpu-memory``) or anything else the SDK reads. A bare letter (``24g``) is the
binary unit, as ``free -g`` and ``docker --memory`` read it.
"""

from __future__ import annotations

import re

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12

#: unit (lower case) -> bytes
UNITS: dict[str, int] = {
    "b": 1, "kb": KB, "mb": MB, "gb": GB, "tb": TB,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
    "k": KiB, "m": MiB, "g": GiB, "t": TiB,
}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size(text: str | int | float, *, default_unit: str = "b", what: str = "size",
               example: str = "80GB or 24GiB") -> int:
    """``"5GB"`` -> 5_000_000_000, ``"5GiB"`` -> 5_368_709_120, ``"512MiB"``, ``"24g"``; a bare
    number is in ``default_unit`` (``"gib"`` for a GPU's memory).

    Raises:
        ValueError: not a size, an unknown unit, or not positive (the caller words it as its
            typed error).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), default_unit
    else:
        match = _SIZE.fullmatch(str(text))
        if not match or (match.group(2) or default_unit).lower() not in UNITS:
            raise ValueError(f"{what} {text!r}: expected a size like {example} (GB = 10^9 bytes, GiB = 2^30 bytes)")
        value, unit = float(match.group(1)), match.group(2) or default_unit
    if value <= 0:
        raise ValueError(f"{what} {text!r} must be positive")
    return int(value * UNITS[unit.lower()])


def format_bytes(count: int | float) -> str:
    """``1536`` -> ``'1.5 KiB'``: a byte count for messages."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns
