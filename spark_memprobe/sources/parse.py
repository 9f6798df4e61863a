"""Parsers for the text of /proc and cgroupfs memory files (pure Python).

The kv grammar is the one in csrc/parse.c; keep the two equal (the parity and fuzz
tests run both on the same bytes):

    KEY [':'] WS+ ['-'] DIGITS{1,19} [WS+ 'kB'] WS* '\\n'

KEY is 1..47 bytes of 0x21..0x7e except ':'; WS is ' ' or '\\t'. kB values become
bytes. Empty lines are skipped; other lines that do not match are counted, never
guessed at. A last line without '\\n' was cut (the kernel always ends its lines) and
is dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

KEYLEN = 48          # MP_KEYLEN in csrc/memprobe.h
INT64_MAX = 2**63 - 1
MISSING_C = -(2**63 - 1)   # MP_MISSING: never a value

_LINE = re.compile(rb"([!-9;-~]+)(:?)([ \t]+)(-?)([0-9]{1,19})(?:[ \t]+(kB))?[ \t]*\Z")
_KEY = re.compile(rb"[!-9;-~]*")


class MalformedFile(ValueError):
    """A kernel file whose text could not be used at all."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class KvParse:
    values: dict[str, int] = field(default_factory=dict)
    kb: dict[str, bool] = field(default_factory=dict)   # key -> the line said kB
    bad_lines: int = 0
    truncated: bool = False


def _value(sign: bytes, digits: bytes, kb: bool) -> Optional[int]:
    v = int(digits)
    if v > INT64_MAX:
        return None
    if kb:
        if v > INT64_MAX // 1024:
            return None
        v *= 1024
    if sign:
        if v > INT64_MAX - 1:
            return None
        v = -v
    return v


def parse_kv(data: bytes, wanted: Optional[Iterable[str]] = None) -> KvParse:
    """Parse a kv file. With `wanted`, lines of other keys are ignored silently (for
    /proc/<pid>/status, whose other lines are not numbers)."""
    want = None if wanted is None else {k.encode("latin-1") for k in wanted}
    out = KvParse()
    lines = data.split(b"\n")
    if lines[-1] != b"":
        out.truncated = True
    for line in lines[:-1]:
        if not line:
            continue
        if want is not None:
            key = _KEY.match(line).group(0)
            if key not in want:
                continue
        m = _LINE.match(line)
        if not m or len(m.group(1)) >= KEYLEN:
            out.bad_lines += 1
            continue
        v = _value(m.group(4), m.group(5), m.group(6) is not None)
        if v is None:
            out.bad_lines += 1
            continue
        key = m.group(1).decode("latin-1")
        out.values[key] = v
        out.kb[key] = m.group(6) is not None
    return out


def parse_single(data: bytes) -> Optional[int | str]:
    """memory.current-style files: one number, or "max", then a newline.
    Returns the int, "max", or None when the text is not that."""
    if not data.endswith(b"\n"):
        return None
    body = data[:-1]
    if body == b"max":
        return "max"
    m = re.fullmatch(rb"(-?)([0-9]{1,19})", body)
    if not m:
        return None
    v = int(m.group(2))
    if v > INT64_MAX - 1:
        return None
    return -v if m.group(1) else v


_PSI = re.compile(rb"(some|full) avg10=([0-9]{1,18})\.([0-9]{2}) avg60=([0-9]{1,18})\.([0-9]{2}) "
                  rb"avg300=([0-9]{1,18})\.([0-9]{2}) total=([0-9]{1,18})\Z")


def parse_pressure(data: bytes) -> Optional[dict[str, float | int]]:
    """memory.pressure (kernel/sched/psi.c prints avgs with exactly two decimals).
    Returns {some_avg10, ..., full_total_us} or None when a line does not match."""
    out: dict[str, float | int] = {}
    for line in data.split(b"\n")[:-1]:
        m = _PSI.match(line)
        if not m:
            return None
        kind = m.group(1).decode()
        for i, name in enumerate(("avg10", "avg60", "avg300")):
            out[f"{kind}_{name}"] = (int(m.group(2 + 2 * i)) * 100 + int(m.group(3 + 2 * i))) / 100
        out[f"{kind}_total_us"] = int(m.group(8))
    return out or None


def parse_numa_stat(data: bytes) -> KvParse:
    """memory.numa_stat: `key N0=bytes N1=bytes ...`. Returns values keyed "key:node"
    (a flat form, split again by the reader); malformed lines are counted."""
    out = KvParse()
    lines = data.split(b"\n")
    if lines[-1] != b"":
        out.truncated = True
    for line in lines[:-1]:
        parts = line.split(b" ")
        if len(parts) < 2 or not _KEY.fullmatch(parts[0]) or not parts[0]:
            out.bad_lines += 1
            continue
        key = parts[0].decode("latin-1")
        ok = True
        for p in parts[1:]:
            m = re.fullmatch(rb"N([0-9]{1,4})=([0-9]{1,19})", p)
            if not m or int(m.group(2)) > INT64_MAX:
                ok = False
                break
            out.values[f"{key}:{int(m.group(1))}"] = int(m.group(2))
        if not ok:
            out.bad_lines += 1
    return out
