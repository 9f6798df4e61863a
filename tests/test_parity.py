"""Fast path and slow path give the same answer: the native sampler and the pure-Python
readers on every fixture tree, and the C and Python parsers on fuzzed bytes."""
import dataclasses
import os
import re
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixture_loader import steps, step_pids
from spark_memprobe.sources.parse import parse_kv
from spark_memprobe.sources.sampler import PureSampler

try:
    from spark_memprobe.sources.native import NativeSampler
    from test_parse import c_parse_kv
except ImportError:
    NativeSampler = None

pytestmark = pytest.mark.skipif(NativeSampler is None, reason="native extension not built")

ALL_STEPS = steps("h100-cgroup2-scenario") + steps("h100-inference-scenario")


def comparable(s):
    d = dataclasses.asdict(s)
    for k in ("mono_ns", "wall_ns", "read_ns"):
        d.pop(k)
    return d


def both(root, cgroup, pids, detail=False):
    kw = dict(proc=os.path.join(root, "proc"), cgroup_root=os.path.join(root, "cgroup"), cgroup=cgroup, pids=pids)
    with PureSampler(**kw) as p, NativeSampler(**kw) as n:
        return comparable(p.sample(detail)), comparable(n.sample(detail))


@pytest.mark.parametrize("step", ALL_STEPS + [os.path.join(os.path.dirname(__file__), "fixtures", "hybrid-v1-vm")],
                         ids=os.path.basename)
def test_fixture_parity(step):
    mem = os.path.join(step, "cgroup", "memory")        # v1 trees: cgroups live under memory/
    base = mem if os.path.isdir(mem) else os.path.join(step, "cgroup")
    for cg in sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))):
        pure, native = both(step, cg, step_pids(step), detail=True)
        assert pure == native


@pytest.mark.parametrize("step", ALL_STEPS[:3] + [os.path.join(os.path.dirname(__file__), "fixtures", "hybrid-v1-vm")],
                         ids=os.path.basename)
def test_without_host_files_the_rest_is_the_same(step):
    """host_files=False (feed/multi.py: the host is read once for all targets): meminfo and
    vmstat are None, no note about them, every other field what the sampler gives with them."""
    mem = os.path.join(step, "cgroup", "memory")
    base = mem if os.path.isdir(mem) else os.path.join(step, "cgroup")
    cg = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))[0]
    kw = dict(proc=os.path.join(step, "proc"), cgroup_root=os.path.join(step, "cgroup"), cgroup=cg,
              pids=step_pids(step))
    with PureSampler(**kw) as p, NativeSampler(**kw) as n:
        whole = comparable(n.sample())
    with PureSampler(host_files=False, **kw) as p, NativeSampler(host_files=False, **kw) as n:
        pure, native = comparable(p.sample()), comparable(n.sample())
    assert pure == native
    assert native["meminfo"] is None and native["vmstat"] is None
    assert not [x for x in native["notes"] if "meminfo" in x or "vmstat" in x]
    assert whole["meminfo"] is not None
    whole.update(meminfo=None, vmstat=None)
    assert native == whole


def test_live_parity_host():
    """On the live host meminfo moves between two reads; the key sets must be equal and the
    values that cannot move (MemTotal) equal."""
    with PureSampler() as p, NativeSampler() as n:
        a, b = p.sample(), n.sample()
    assert a.meminfo.bytes.keys() == b.meminfo.bytes.keys()
    assert a.meminfo.counts == b.meminfo.counts
    assert a.vmstat.counters.keys() == b.vmstat.counters.keys()
    assert a.meminfo.get("MemTotal") == b.meminfo.get("MemTotal")


# -- fuzz: the same bytes through both parsers --------------------------------------
KEYS = st.sampled_from(["MemTotal", "anon", "file", "Active(anon)", "nr_x", "k:", "VmRSS", "a b", "é", ""])
NUM = st.one_of(st.integers(-2**64, 2**64).map(str), st.sampled_from(["", "-", "1.5", "0x10", "9" * 20]))
LINE = st.builds(lambda k, sep, n, unit, tail: f"{k}{sep}{n}{unit}{tail}",
                 KEYS, st.sampled_from([":", ": ", " ", ":\t", "\t", "::", ""]), NUM,
                 st.sampled_from(["", " kB", "kB", " KB", "\tkB", " kB "]), st.sampled_from(["", " ", "x"]))
TEXT = st.lists(LINE, max_size=30).map(lambda ls: "\n".join(ls)).map(lambda t: t.encode("utf-8"))
TEXT_END = st.tuples(TEXT, st.booleans()).map(lambda x: x[0] + (b"\n" if x[1] else b""))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(TEXT_END, st.binary(max_size=600)))
def test_fuzz_kv_parity(data):
    py = parse_kv(data)
    vals, units, bad, trunc, _ = c_parse_kv(data)
    assert (py.values, py.kb, py.bad_lines, py.truncated) == (vals, units, bad, trunc)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=TEXT_END, second=st.one_of(TEXT_END, TEXT_END.map(lambda t: re.sub(rb"[0-9]", b"7", t)),
                                        st.binary(max_size=600)))
def test_fuzz_parity_of_a_second_read(tmp_path_factory, first, second):
    """A second read of a file through a key table that knows its keys takes the key expected at
    each line without scanning it (csrc/parse.c): both samplers still agree on the new text."""
    root = tmp_path_factory.mktemp("proc")
    (root / "vmstat").write_bytes(first)
    with PureSampler(proc=str(root)) as p, NativeSampler(proc=str(root)) as n:
        assert comparable(p.sample()) == comparable(n.sample())
        (root / "vmstat").write_bytes(second)          # the same inode: both descriptors see it
        assert comparable(p.sample()) == comparable(n.sample())


@settings(max_examples=400)
@given(st.one_of(TEXT_END, st.binary(max_size=600)))
def test_fuzz_never_invents(data):
    """Every value reported stands in the text on a well-formed line: no silent 0."""
    for k, v in parse_kv(data).values.items():
        kb = parse_kv(data).kb[k]
        raw = v // 1024 if kb else v
        pat = re.escape(k.encode("latin-1")) + rb":?[ \t]+" + (rb"-" if raw < 0 else b"") + \
            str(abs(raw)).encode() + (rb"[ \t]+kB" if kb else b"") + rb"[ \t]*(\n|$)"
        assert re.search(pat, data, re.M), (k, v)


# -- malformed files inside a real tree, through both samplers ------------------------
STEP07 = [s for s in ALL_STEPS if "07-managed" in s][0]
FILES = ["proc/meminfo", "proc/vmstat", "proc/437/status", "cgroup/memprobe_fixture/memory.stat",
         "cgroup/memprobe_fixture/memory.current", "cgroup/memprobe_fixture/memory.max",
         "cgroup/memprobe_fixture/memory.events", "cgroup/memprobe_fixture/memory.pressure"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(FILES), cut=st.integers(0, 4000), junk=st.binary(max_size=40))
def test_fuzz_truncated_and_corrupt_files(tmp_path_factory, which, cut, junk):
    root = tmp_path_factory.mktemp("tree")
    shutil.copytree(STEP07, root, dirs_exist_ok=True)
    path = root / which
    data = path.read_bytes()
    path.write_bytes(data[:cut] + junk)
    pure, native = both(str(root), "memprobe_fixture", [437])
    assert pure == native


def test_poll_less_parity(tmp_path):
    """stat_max_age_s: both samplers carry memory.stat and status alike, and say so alike. A
    memory.stat that moves while memory.current stands is not seen until the usage moves (the
    reason for the max age, tests/test_poll_less.py)."""
    shutil.copytree(STEP07, tmp_path, dirs_exist_ok=True)
    cgdir = tmp_path / "cgroup" / "memprobe_fixture"
    kw = dict(proc=str(tmp_path / "proc"), cgroup_root=str(tmp_path / "cgroup"), cgroup="memprobe_fixture",
              pids=[437], stat_max_age_s=30)
    stamp = re.compile(r"mono_ns \d+")

    def same(a, b):
        a, b = comparable(a), comparable(b)
        a["notes"], b["notes"] = ([stamp.sub("mono_ns N", n) for n in x["notes"]] for x in (a, b))
        assert a == b
        return a

    with PureSampler(**kw) as p, NativeSampler(**kw) as n:
        first = same(p.sample(), n.sample())
        stat = (cgdir / "memory.stat").read_bytes()
        (cgdir / "memory.stat").write_bytes(stat.replace(b"\nfile ", b"\nfile 1", 1))
        carried = same(p.sample(), n.sample())
        assert carried["cgroup"] == first["cgroup"] and carried["processes"] == first["processes"]
        assert any("not read again" in x for x in carried["notes"])
        cur = int((cgdir / "memory.current").read_text())
        (cgdir / "memory.current").write_text(f"{cur + 4096}\n")
        fresh = same(p.sample(), n.sample())
        assert fresh["cgroup"]["stat"]["file"] != first["cgroup"]["stat"]["file"]
        assert not any("not read again" in x for x in fresh["notes"])
        assert p.full_reads == n.full_reads == 2
