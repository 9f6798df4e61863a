"""The C and Python kv parsers on the same bytes, without hypothesis: a fixed-seed generator of
kernel-like lines and raw bytes, with bytes >= 0x80 in keys and values on purpose (char is
signed on x86_64 and unsigned on aarch64: a range check written for one breaks on the other).

tests/test_parity.py fuzzes the same with hypothesis; under the arm64 tier's TCG emulation its
two 400-example tests take almost four minutes, this one seconds, so the tier runs this one."""
from __future__ import annotations

import random

import pytest

from spark_memprobe.sources.parse import parse_kv

try:
    from test_parse import c_parse_kv
    from spark_memprobe._native import lib  # noqa: F401
except ImportError:
    c_parse_kv = None

KEYS = [b"MemTotal", b"anon", b"file", b"Active(anon)", b"nr_x", b"k:", b"VmRSS", b"a b", "é".encode(), b"",
        b"\x80key", b"ke\xffy", b"\x7f", b"x" * 47, b"y" * 48]
SEPS = [b":", b": ", b" ", b":\t", b"\t", b"::", b"", b"\xa0"]
NUMS = [b"0", b"1", b"-1", b"", b"-", b"1.5", b"0x10", b"9" * 19, b"9" * 20, b"9223372036854775807",
        b"9223372036854775808", b"-9223372036854775807", b"9007199254740993", b"12\x85", b"\xb9"]
UNITS = [b"", b" kB", b"kB", b" KB", b"\tkB", b" kB ", b" k\xc2B"]


GOOD = (KEYS[:7], [b":", b": ", b" ", b":\t"], [b"0", b"1", b"-1", b"9" * 19, b"9223372036854775807"],
        [b"", b" kB"], [b"", b" "])
ANY = (KEYS, SEPS, NUMS, UNITS, [b"", b" ", b"x"])


def cases(n: int, seed: int = 19):
    r = random.Random(seed)
    for _ in range(n):
        if r.random() < 0.1:
            yield bytes(r.getrandbits(8) for _ in range(r.randrange(0, 200)))
            continue
        # each part well-formed most of the time, so lines mix valid and invalid fields
        lines = [b"".join(r.choice(g if r.random() < 0.75 else a) for g, a in zip(GOOD, ANY))
                 for _ in range(r.randrange(0, 12))]
        yield b"\n".join(lines) + (b"\n" if r.random() < 0.8 else b"")


@pytest.mark.skipif(c_parse_kv is None, reason="native extension not built")
def test_c_and_python_parsers_agree_on_generated_bytes():
    n = 0
    for data in cases(5000):
        py = parse_kv(data)
        vals, units, bad, trunc, _ = c_parse_kv(data)
        assert (py.values, py.kb, py.bad_lines, py.truncated) == (vals, units, bad, trunc), data
        n += 1
    assert n == 5000
