"""An A/B experiment's result (`memprobe ab`, docs/ab.md): mean and 95 % confidence interval per arm
(Student's t), the difference with Welch's interval, whether the arms started from the same page-cache
state, and the comparison of two of its recordings (analysis/compare.py) that attributes the difference.

The verdict is withheld when, for any named file, the arms' mean cached bytes before their runs differ
by more than CACHE_TOLERANCE of the file (at least CACHE_FLOOR_BYTES): the difference could then be the
cache state, which the experiment did not hold equal."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..feed.ab import Run
from ..recording import RecordingError
from .compare import Comparison, compare
from .report import analyse, open_recording

CACHE_TOLERANCE = 0.02
CACHE_FLOOR_BYTES = 1 << 20
# Student's t, two-sided 95 % (0.975 quantile), df 1..30 (any statistics table, e.g. NIST/SEMATECH
# e-Handbook 1.3.6.7.2); beyond 30 the Cornish-Fisher expansion below is within 0.001 of it
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]
Z975 = 1.959964


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (fractional df rounded down:
    a wider, conservative interval)."""
    d = max(1, int(math.floor(df)))
    if d <= len(T975):
        return T975[d - 1]
    z = Z975
    return z + (z ** 3 + z) / (4 * d) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * d * d)


@dataclass
class ArmStats:
    arm: str
    values: list[int]
    n: int
    mean: Optional[float]
    sd: Optional[float]                 # sample standard deviation (n - 1)
    half_width: Optional[float]         # of the 95 % interval: t(n-1) x sd / sqrt(n)


@dataclass
class Difference:
    mean: float                         # B - A
    half_width: Optional[float]         # Welch's 95 % interval
    df: Optional[float]

    @property
    def excludes_zero(self) -> bool:
        return self.half_width is not None and abs(self.mean) > self.half_width


@dataclass
class FileCacheCheck:
    path: str
    size_bytes: Optional[int]
    a_bytes: list[Optional[int]]        # cached before each of A's runs
    b_bytes: list[Optional[int]]
    differs: Optional[bool]             # None: not measured before every run

    @staticmethod
    def mean(xs: list[Optional[int]]) -> Optional[float]:
        return None if not xs or any(x is None for x in xs) else sum(xs) / len(xs)


@dataclass
class AbResult:
    runs: list[Run]
    cache_mode: str
    a: ArmStats
    b: ArmStats
    diff: Optional[Difference]
    files: list[FileCacheCheck]
    refused: list[str] = field(default_factory=list)     # why no conclusion is drawn
    pair: Optional[tuple[Run, Run]] = None               # the two runs compared for attribution
    comparison: Optional[Comparison] = None
    comparison_error: Optional[str] = None

    @property
    def concluded(self) -> bool:
        return not self.refused


def arm_stats(arm: str, runs: list[Run]) -> ArmStats:
    vals = [r.value_bytes for r in runs if r.arm == arm and r.value_bytes is not None]
    n = len(vals)
    if n == 0:
        return ArmStats(arm, vals, 0, None, None, None)
    mean = sum(vals) / n
    if n < 2:
        return ArmStats(arm, vals, n, mean, None, None)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return ArmStats(arm, vals, n, mean, sd, t975(n - 1) * sd / math.sqrt(n))


def difference(a: ArmStats, b: ArmStats) -> Optional[Difference]:
    """B - A with Welch's interval (unequal variances, Welch-Satterthwaite df)."""
    if a.mean is None or b.mean is None:
        return None
    if a.sd is None or b.sd is None:
        return Difference(b.mean - a.mean, None, None)
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(b.mean - a.mean, 0.0, float(a.n + b.n - 2))
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    return Difference(b.mean - a.mean, t975(df) * se, df)


def cache_checks(runs: list[Run]) -> list[FileCacheCheck]:
    out = []
    paths = [c.path for c in runs[0].cache] if runs else []
    for k, p in enumerate(paths):
        # a run stopped before its cache was measured has no entry: not measured
        a = [r.cache[k].cached_bytes if k < len(r.cache) else None for r in runs if r.arm == "A"]
        b = [r.cache[k].cached_bytes if k < len(r.cache) else None for r in runs if r.arm == "B"]
        size = next((r.cache[k].size_bytes for r in runs if k < len(r.cache) and r.cache[k].size_bytes), None)
        ma, mb = FileCacheCheck.mean(a), FileCacheCheck.mean(b)
        differs = None
        if ma is not None and mb is not None:
            differs = abs(ma - mb) > max(CACHE_FLOOR_BYTES, CACHE_TOLERANCE * (size or 0))
        out.append(FileCacheCheck(p, size, a, b, differs))
    return out


def _pair(runs: list[Run], diff: Optional[Difference]) -> Optional[tuple[Run, Run]]:
    """The A run and the B run farthest apart in the difference's direction (both recorded, with a value)."""
    ok = [r for r in runs if r.value_bytes is not None and r.target is not None]
    a = [r for r in ok if r.arm == "A"]
    b = [r for r in ok if r.arm == "B"]
    if not a or not b:
        return None
    up = diff is None or diff.mean >= 0
    ra = (min if up else max)(a, key=lambda r: (r.value_bytes, r.index))
    rb = (max if up else min)(b, key=lambda r: (r.value_bytes, r.index))
    return ra, rb


def analyse_ab(runs: list[Run], cache_mode: str, kv_fraction: Optional[float] = None) -> AbResult:
    a, b = arm_stats("A", runs), arm_stats("B", runs)
    d = difference(a, b)
    files = cache_checks(runs)
    res = AbResult(runs, cache_mode, a, b, d, files)
    for s in (a, b):
        if s.n < 2:
            res.refused.append(f"arm {s.arm} has {s.n} run{'' if s.n == 1 else 's'} with a value: an interval "
                               "needs at least 2")
    for f in files:
        if f.differs:
            res.refused.append(f"the arms started from different page-cache states of {f.path} "
                               f"(cache {cache_mode}): the difference may be the cache, not the arms")
        elif f.differs is None:
            res.refused.append(f"the page cache of {f.path} was not measured before every run")
    res.pair = _pair(runs, d)
    if res.pair is not None:
        datas = []
        try:
            for r in res.pair:
                rec = open_recording(r.recording)
                try:
                    datas.append(analyse(rec, kv_fraction))
                finally:
                    rec.close()
            res.comparison = compare(datas[0], datas[1])
        except RecordingError as e:          # empty or unreadable: the numbers stand without attribution
            res.comparison_error = str(e)
    return res
