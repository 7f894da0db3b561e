"""Human figures for byte counts, so every message and view writes sizes the same way."""

from __future__ import annotations

from .values import GiB, MiB

KiB = 1024


def format_gib(n_bytes: float | None) -> str:
    """``'79.6 GiB'`` (always GiB, one decimal) for memory and weights; ``'-'`` when unknown (None)."""
    return "-" if n_bytes is None else f"{n_bytes / GiB:.1f} GiB"


def format_bytes(n_bytes: float | None) -> str:
    """The largest fitting unit, for transfer sizes and progress: ``'1.25 GiB'``, ``'512.0 MiB'``,
    ``'3.0 KiB'``, ``'10 B'``; ``'-'`` when unknown (None)."""
    if n_bytes is None:
        return "-"
    size = abs(n_bytes)
    if size >= GiB:
        return f"{n_bytes / GiB:.2f} GiB"
    if size >= MiB:
        return f"{n_bytes / MiB:.1f} MiB"
    if size >= KiB:
        return f"{n_bytes / KiB:.1f} KiB"
    return f"{int(n_bytes)} B"
