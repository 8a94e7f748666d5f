"""How Layover writes quantities for people: bytes in binary units."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """5 B, 2.0 KiB, 3.4 MiB, 1.2 GiB (never larger units: packages are measured in GiB)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
