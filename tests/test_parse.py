"""The kv grammar, single-value and PSI parsers: exact cases, in Python and in C."""
import pytest

from spark_memprobe.sources.parse import parse_kv, parse_numa_stat, parse_pressure, parse_single

try:
    from spark_memprobe._native import ffi, lib
except ImportError:  # the native tests below say why they skip
    lib = None

needs_native = pytest.mark.skipif(lib is None, reason="native extension not built")


def c_parse_kv(data: bytes):
    """Run the C parser on bytes; same shape as parse_kv's result."""
    keys = ffi.new("char[]", 384 * lib.MP_KEYLEN)
    vals = ffi.new("int64_t[]", 384)
    kb = ffi.new("uint8_t[]", 384)
    hdr = ffi.new("struct mp_filehdr *")
    n = lib.mp_parse_kv_buffer(data, len(data), keys, vals, kb, 384, hdr)
    out = {}
    units = {}
    for i in range(n):
        k = ffi.string(keys + i * lib.MP_KEYLEN).decode("latin-1")
        if vals[i] != lib.MP_MISSING:
            out[k] = vals[i]
            units[k] = bool(kb[i])
    return out, units, hdr.bad_lines, bool(hdr.truncated), hdr.err


CASES = [
    # (text, values, bad_lines, truncated)
    (b"MemTotal:       131981020 kB\nHugePages_Total:       0\n", {"MemTotal": 131981020 * 1024, "HugePages_Total": 0}, 0, False),
    (b"anon 159170560\nfile 4811362304\n", {"anon": 159170560, "file": 4811362304}, 0, False),
    (b"VmRSS:\t 5640788 kB\n", {"VmRSS": 5640788 * 1024}, 0, False),
    (b"Active(anon):         48 kB\n", {"Active(anon)": 48 * 1024}, 0, False),
    (b"anon 12\nfile 3", {"anon": 12}, 0, True),                      # cut mid-line: dropped
    (b"anon abc\nfile 3\n", {"file": 3}, 1, False),                    # not a number: counted
    (b"anon 99999999999999999999\n", {}, 1, False),                   # 20 digits: too long
    (b"anon 9223372036854775807\n", {"anon": 9223372036854775807}, 0, False),
    (b"anon 9223372036854775808\n", {}, 1, False),                    # > INT64_MAX
    (b"x 9007199254740992 kB\n", {}, 1, False),                       # kB overflow
    (b"nr_x -5\n", {"nr_x": -5}, 0, False),
    (b"anon 1 MB\n", {}, 1, False),
    (b"anon1\n", {}, 1, False),
    (b"\nanon 1\n\n", {"anon": 1}, 0, False),                         # empty lines are fine
    (b"a:b 1\n", {}, 1, False),
    (b"k" * 47 + b" 1\n", {"k" * 47: 1}, 0, False),
    (b"k" * 48 + b" 1\n", {}, 1, False),
    (b"anon 1\nanon 2\n", {"anon": 2}, 0, False),                     # duplicate: last wins
    (b"", {}, 0, False),
]


@pytest.mark.parametrize("text,values,bad,trunc", CASES)
def test_kv_python(text, values, bad, trunc):
    r = parse_kv(text)
    assert (r.values, r.bad_lines, r.truncated) == (values, bad, trunc)


@needs_native
@pytest.mark.parametrize("text,values,bad,trunc", CASES)
def test_kv_c(text, values, bad, trunc):
    vals, _, nbad, ntrunc, err = c_parse_kv(text)
    assert (vals, nbad, ntrunc) == (values, bad, trunc)
    assert err == (0 if values else -74)      # -EBADMSG when no line parsed


def test_kv_units():
    r = parse_kv(b"MemTotal: 1 kB\nHugePages_Total: 2\n")
    assert r.kb == {"MemTotal": True, "HugePages_Total": False}


def test_wanted_ignores_other_lines():
    text = b"Name:\tpython3\nUid:\t0\t0\t0\t0\nVmRSS:\t 8 kB\nRssAnon:\t x kB\n"
    r = parse_kv(text, wanted=["VmRSS", "RssAnon"])
    assert r.values == {"VmRSS": 8192} and r.bad_lines == 1


@pytest.mark.parametrize("text,want", [
    (b"6061768704\n", 6061768704), (b"max\n", "max"), (b"0\n", 0),
    (b"6061768704", None), (b"max", None), (b"12 kB\n", None), (b"\n", None), (b"", None),
    (b"9223372036854775807\n", None), (b"-1\n", -1),
])
def test_single(text, want):
    assert parse_single(text) == want
    if lib is not None:
        v = ffi.new("int64_t *")
        rc = lib.mp_parse_single(text, len(text), v)
        got = None if rc else ("max" if v[0] == lib.MP_UNLIMITED else v[0])
        assert got == want


PSI = b"some avg10=1.25 avg60=0.00 avg300=10.50 total=1234\nfull avg10=0.00 avg60=0.01 avg300=0.00 total=99\n"


def test_pressure():
    p = parse_pressure(PSI)
    assert p == {"some_avg10": 1.25, "some_avg60": 0.0, "some_avg300": 10.5, "some_total_us": 1234,
                 "full_avg10": 0.0, "full_avg60": 0.01, "full_avg300": 0.0, "full_total_us": 99}
    assert parse_pressure(b"some avg10=1.2 avg60=0.00 avg300=0.00 total=1\n") is None
    assert parse_pressure(b"") is None


@needs_native
def test_pressure_c():
    out = ffi.new("int64_t[8]")
    assert lib.mp_parse_pressure(PSI, len(PSI), out) == 0
    assert list(out) == [125, 0, 1050, 1234, 0, 1, 0, 99]
    bad = b"some avg10=1.2 avg60=0.00 avg300=0.00 total=1\n"
    assert lib.mp_parse_pressure(bad, len(bad), out) < 0


def test_numa_stat():
    r = parse_numa_stat(b"anon N0=4096 N1=8192\nfile N0=0\nbad line\n")
    assert r.values == {"anon:0": 4096, "anon:1": 8192, "file:0": 0} and r.bad_lines == 1
