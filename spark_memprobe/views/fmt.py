"""Number formatting shared by every view."""
from __future__ import annotations

from typing import Optional

MISSING = "—"


def fmt_bytes(n: Optional[int | str]) -> str:
    """Binary units with three significant figures; "max" stays "max"; None is a dash."""
    if n is None:
        return MISSING
    if isinstance(n, str):
        return n
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{int(v)} B"
            return f"{sign}{v:.3g} {unit}" if v < 100 else f"{sign}{v:.0f} {unit}"
        v /= 1024
    return f"{sign}{v:.0f} TiB"


def fmt_int(n: Optional[int]) -> str:
    return MISSING if n is None else f"{n:,}"
