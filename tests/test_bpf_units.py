"""Parts of the eBPF probes that need no kernel: BTF enum parsing, maps parsing, the tables
shared by bpf/cuda.c and Python, event round trips, rendering, and the tool without bcc."""
from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys

import pytest
from rich.console import Console

from spark_memprobe.probe_report import (CudaOutstanding, FaultCount, FaultRegion, MemcgDelta, PageCacheFile,
                                   ProbeReport, ProbeStatus, report_from_dict, report_to_dict)
from spark_memprobe.sources.bpf import bccload
from spark_memprobe.sources.bpf.btf import BTFError, parse_enums, read_enums
from spark_memprobe.sources.bpf.cuda import CUDA_FUNCS, LIB_RE, parse_maps
from spark_memprobe.sources.bpf.resolve import kernel_dev
from spark_memprobe.sources.bpf.session import BPF_DIR, PARTS
from spark_memprobe.views.probes import render_report

pytestmark = pytest.mark.bpf


def _btf(types: bytes, strings: bytes) -> bytes:
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_btf_enum_parser_on_a_built_blob():
    strings = b"\0int\0colour\0RED\0GREEN\0other\0X\0"
    off = {n: strings.index(n.encode() + b"\0") for n in ("int", "colour", "RED", "GREEN", "other", "X")}
    t = struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)            # INT
    t += struct.pack("<III", off["colour"], (6 << 24) | 2, 4)                          # ENUM, 2 values
    t += struct.pack("<Ii", off["RED"], 0) + struct.pack("<Ii", off["GREEN"], 7)
    t += struct.pack("<III", off["other"], (19 << 24) | 1, 8)                          # ENUM64, 1 value
    t += struct.pack("<III", off["X"], 5, 1)
    enums = parse_enums(_btf(t, strings), {"colour", "other"})
    assert enums == {"colour": {0: "RED", 7: "GREEN"}, "other": {(1 << 32) | 5: "X"}}
    with pytest.raises(BTFError):
        parse_enums(b"\0" * 32, {"colour"})


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="no kernel BTF on this host")
def test_btf_of_the_running_kernel_names_memcg_items():
    enums = read_enums({"node_stat_item", "memcg_stat_item"})
    node, memcg = enums["node_stat_item"], enums["memcg_stat_item"]
    assert "NR_FILE_PAGES" in node.values() and "NR_ANON_MAPPED" in node.values()
    nr_node = {v: k for k, v in node.items()}["NR_VM_NODE_STAT_ITEMS"]
    # memcg_stat_item continues node_stat_item's numbering (include/linux/memcontrol.h)
    assert min(memcg) == nr_node and "MEMCG_KMEM" in memcg.values()


def test_cuda_function_table_matches_the_bpf_program():
    with open(os.path.join(BPF_DIR, "cuda.c")) as f:
        c = f.read()
    defines = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define MP_CU_FUNC_(\w+) (\d+)", c)}
    canonical = {f.name: f.func_id for f in CUDA_FUNCS if not f.optional}
    assert defines == canonical
    for f in CUDA_FUNCS:
        assert re.search(rf"int {f.entry}\(struct pt_regs \*ctx\)", c), f.entry
        assert re.search(rf"int {f.ret}\(struct pt_regs \*ctx\)", c), f.ret
        if f.optional:
            assert f.name.endswith("_ptsz") and canonical[f.name[:-5]] == f.func_id


def test_bpf_sources_use_no_struct_walks():
    """Headers may not match the kernel: only helpers, tracepoint args and pt_regs."""
    for name in list(PARTS.values()) + ["uvm.c"]:
        with open(os.path.join(BPF_DIR, name)) as f:
            src = f.read()
        assert "bpf_get_current_task" not in src and "bpf_probe_read_kernel" not in src, name


def test_maps_parsing_and_library_names():
    text = ("7f0000000000-7f0000100000 r-xp 00001000 fe:01 1234 /usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06\n"
            "7f0000200000-7f0000300000 rw-p 00000000 00:00 0 \n"
            "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n"
            "garbage line\n")
    e = parse_maps(text)
    assert [(x.start, x.dev_major, x.dev_minor, x.inode, x.path) for x in e] == [
        (0x7F0000000000, 0xFE, 1, 1234, "/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06"),
        (0x7F0000200000, 0, 0, 0, ""), (0x7FFD00000000, 0, 0, 0, "[stack]")]
    assert LIB_RE.search("/usr/lib64/libcuda.so.1") and LIB_RE.search("libcuda.so")
    assert not LIB_RE.search("/usr/lib/libcudart.so.12") and not LIB_RE.search("/x/libcuda.so.1.bak")


def test_kernel_dev_decoding():
    assert kernel_dev((254 << 20) | 1) == (254, 1)
    assert kernel_dev((8 << 20) | 0x12345) == (8, 0x12345)


def _report() -> ProbeReport:
    return ProbeReport(
        started_mono_ns=0, ended_mono_ns=2_000_000_000, target="pid 42",
        probes=[ProbeStatus("faults", "perf:software/page-faults", True, "works"),
                ProbeStatus("uvm", "fentry:nvidia_uvm:uvm_cpu_chunk_alloc", False, "nvidia_uvm module not loaded")],
        faults=[FaultCount(cgroup_id=77, pid=42, faults=3000, comm="[weird]", cgroup_path="/a")],
        fault_regions=[FaultRegion(42, "[anon]", 3000, 6)],
        page_cache=[PageCacheFile(cgroup_id=77, dev_major=254, dev_minor=0, inode=9, added_pages=7000,
                                  removed_pages=1000, path="/models/x.safetensors", path_source="fd of pid 42")],
        page_cache_untracked_pages=0,
        memcg=[MemcgDelta(memcg_id=5, item=19, delta=256, item_name="NR_FILE_PAGES", stat_key="file",
                          cgroup_path="/a", increase=512, decrease=-256)], memcg_source="tracepoint",
        cuda=[CudaOutstanding(pid=42, kind="device", outstanding_bytes=1 << 30, allocs=1, frees=0)],
        cuda_calls=[], cuda_lost_events=0, cgroup_paths={77: "/a"}, notes=["a note"])


def test_report_round_trips_through_json():
    r = _report()
    back = report_from_dict(json.loads(json.dumps(report_to_dict(r))))
    assert back == r
    assert back.page_cache[0].net_bytes == 6000 * back.page_size == 6000 * os.sysconf("SC_PAGE_SIZE")


def test_report_renders_with_names_and_sizes():
    buf = io.StringIO()
    Console(file=buf, width=160, no_color=True, highlight=False, color_system=None).print(render_report(_report()))
    out = buf.getvalue()
    for s in ("[anon]", "[weird]", "/models/x.safetensors", "23.4 MiB", "1 GiB", "/a (77)", "NR_FILE_PAGES",
              "1 MiB", "2 MiB", "-1 MiB", "nvidia_uvm module not loaded", "3,000"):
        assert s in out, s


def test_without_bcc_the_tool_explains_in_one_line_and_the_rest_works(monkeypatch, capsys):
    monkeypatch.setattr(bccload, "BCC_PACKAGE_DIRS", [])
    monkeypatch.setattr(bccload, "_bcc", None)
    monkeypatch.setattr(bccload, "_bcc_error", None)
    monkeypatch.setitem(sys.modules, "bcc", None)       # `import bcc` raises ImportError
    from spark_memprobe.cli import main
    from spark_memprobe.sources.bpf import base_status
    from spark_memprobe.sources.capabilities import check_bpf_probes
    ok, why = base_status()
    assert not ok and "\n" not in why
    if os.geteuid() == 0:
        assert "python3-bpfcc" in why
    c = check_bpf_probes()
    assert not c.ok and c.detail == why
    rc = main(["probes", "--run", "--duration", "1"])
    err = capsys.readouterr().err
    assert rc in (4, 5) and err.count("\n") == 1 and "eBPF probes unavailable" in err
    assert main(["probes"]) == 0
    assert "eBPF probes unavailable" in capsys.readouterr().out
    assert main(["probes", "--dump-bpf"]) == 0
    assert "mp_cu_alloc_ret" in capsys.readouterr().out


def test_bcc_is_found_from_a_python_without_dist_packages():
    """A fresh interpreter that cannot see dist-packages (like the venv) still gets Debian's
    bcc module, and only that package from there."""
    if not os.path.isfile("/usr/lib/python3/dist-packages/bcc/__init__.py"):
        pytest.skip("Debian's python3-bpfcc is not installed")
    code = ("import sys; from spark_memprobe.sources.bpf import bccload as b; m = b.import_bcc(); "
            "print(m.__file__); print(any('dist-packages' in p for p in sys.path))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["/usr/lib/python3/dist-packages/bcc/__init__.py", "False"]


def test_proc_stat_fault_counters_survive_odd_comms_and_count_from_start():
    """A process may name itself ") 1 2 3": the counters are read after the last ')'. A process
    alive at start counts from its value then; an exited one keeps its last polled count."""
    from spark_memprobe.sources.bpf.fault_counters import FaultCounters, read_proc_pid_stat_faults
    src = ("import mmap, sys\nopen('/proc/self/comm', 'w').write(') 1 2 3')\nprint('ready', flush=True)\n"
           "sys.stdin.readline()\nm = mmap.mmap(-1, 2000 * mmap.PAGESIZE)\n"
           "for i in range(0, 2000 * mmap.PAGESIZE, mmap.PAGESIZE):\n    m[i] = 1\n"
           "print('done', flush=True)\nsys.stdin.readline()\n")
    p = subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with open(f"/proc/{p.pid}/stat") as f:
            assert ") 1 2 3)" in f.read()
        start, before = read_proc_pid_stat_faults("/proc", p.pid)
        c = FaultCounters("/proc")
        c.start([p.pid])
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "done"
        c.poll([p.pid])
        n = c.faults()[p.pid]
        assert 2000 <= n < before + 2000 and read_proc_pid_stat_faults("/proc", p.pid)[0] == start
    finally:
        p.stdin.close()
        p.wait()
    c.poll([p.pid])                          # gone: the last polled count stays
    assert c.faults()[p.pid] == n and read_proc_pid_stat_faults("/proc", p.pid) is None
