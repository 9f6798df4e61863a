"""Argument types shared by every subcommand (argparse `type=`). Each raises
ArgumentTypeError, which argparse prints as `argument --FLAG: <reason>` with exit 2, so every
message names the flag it is about. The forms accepted are listed in docs/exit-codes.md."""
from __future__ import annotations

import argparse
import math
import re

UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# A bare number is seconds; else number+unit parts, largest unit first, each unit once: 1h30m, 2m30s
DURATION = re.compile(rf"{NUMBER}|(?:{NUMBER}d)?(?:{NUMBER}h)?(?:{NUMBER}m(?!s))?(?:{NUMBER}s)?(?:{NUMBER}ms)?")
PART = re.compile(rf"({NUMBER})(ms|d|h|m|s)?")
MIN_INTERVAL_S = 0.01          # the sampling loop's floor
MIN_BURST_S = 0.0001           # record's burst mode: the native sampler's floor (csrc/sampler.c, 10 kHz)
MAX_DURATION_S = 366 * 86400.0  # beyond a year is a typo, and time.sleep() overflows near 292 years


def _seconds(text: str, minimum: float) -> float:
    t = text.strip().lower()
    sign = -1.0 if t[:1] == "-" else 1.0
    body = t[1:] if t[:1] in ("-", "+") else t
    if not body or not DURATION.fullmatch(body):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 250ms, 2s, 1.5, 90m, 1h30m, 1d)")
    v = sign * sum(float(n) * UNIT_S[u or "s"] for n, u in PART.findall(body))
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    if v < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum * 1000:g}ms, got {text!r}")
    if v > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_DURATION_S / 86400:g}d, got {text!r}")
    return v


def duration(text: str) -> float:
    """'1h30m', '90m', '2s', '250ms', '1.5', '1d' -> seconds; more than 0, at most 366 days."""
    return _seconds(text, 0.0)


def interval(text: str) -> float:
    """A duration between samples: at least 10 ms."""
    return _seconds(text, MIN_INTERVAL_S)


def burst_interval(text: str) -> float:
    """A duration between samples for `record`: under 10 ms is burst mode (docs/record.md), down to 0.1 ms."""
    return _seconds(text, MIN_BURST_S)


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def fraction(text: str) -> float:
    """A fraction in (0, 1], e.g. 0.9."""
    v = _finite(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return v


def positive_number(text: str) -> float:
    """A finite number above 0, e.g. a playback speed."""
    v = _finite(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return v


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return v


def cgroup_path(text: str) -> str:
    """A cgroup path inside its hierarchy, refused where it would silently name another cgroup
    (sources/targets.py check_cgroup_path)."""
    from ..sources.targets import TargetError, check_cgroup_path
    try:
        return check_cgroup_path(text)
    except TargetError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def size(text: str) -> int:
    """'512M', '1G', '1GiB', '1.5G', '1000000' -> bytes (binary units)."""
    from fractions import Fraction
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 512M, 1G)")
    return int(Fraction(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
