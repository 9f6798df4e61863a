"""Number formatting shared by every view: the one byte formatter, and sparklines."""
from __future__ import annotations

from typing import Optional

MISSING = "—"
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
SPARK = "▁▂▃▄▅▆▇█"


def byte_unit(n: float) -> tuple[int, str]:
    """The binary unit that shows n with one to three digits before the point (TiB at most):
    (its size in bytes, its name)."""
    k = 0
    while k < len(UNITS) - 1 and abs(n) >= 1024 ** (k + 1):
        k += 1
    return 1024 ** k, UNITS[k]


def fmt_bytes(n: Optional[int | str], exact: bool = False, sign: bool = False) -> str:
    """Binary units with three significant figures ('1.01 GiB'); "max" stays "max"; None is a dash.
    exact: the bytes as well ('1.01 GiB (1082130432 B)'); sign: '+' before a rise."""
    if n is None:
        return MISSING
    if isinstance(n, str):
        return n
    div, unit = byte_unit(n)
    v = abs(n) / div
    text = ("-" if n < 0 else "+" if sign and n > 0 else "") + \
        (f"{int(v)} B" if unit == "B" else f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}")
    return f"{text} ({n} B)" if exact and unit != "B" else text


def fmt_int(n: Optional[int]) -> str:
    return MISSING if n is None else f"{n:,}"


def sparkline(ys: list, width: int = 40, from_zero: bool = False) -> str:
    """Unicode sparkline of a series in at most `width` characters (the largest value per
    character); a space where nothing was read. Scaled min to max, or from zero (from_zero:
    the live screen, where small changes of a large value must look small)."""
    n = len(ys)
    width = min(width, n)
    vals = [y for y in ys if y is not None]
    if not vals:
        return " " * width
    lo, hi = min(vals), max(vals)
    if from_zero:
        lo = min(0, lo)
    out = []
    for b in range(width):
        chunk = [y for y in ys[b * n // width:(b + 1) * n // width] if y is not None]
        if not chunk:
            out.append(" ")
            continue
        k = 0 if hi == lo else int((max(chunk) - lo) / (hi - lo) * (len(SPARK) - 1) + 0.5)
        out.append(SPARK[k])
    return "".join(out)
