"""memprobe preflight, live on this host: a file read into a real memory cgroup (tests/livecg.py)
is ranked by its mincore bytes, and after `memprobe evict` the ranking changes by the file's
bytes within a page. This host has no GPU, so the engine is modelled as on integrated UMA
(EngineState.modelled_uma): cudaMemGetInfo = MemFree / MemTotal."""
from __future__ import annotations

import json
import mmap
import os
import re


from livecg import MiB
from test_evict import FILE_MIB, read_file  # noqa: F401  (fixture: a FILE_MIB file read in a test cgroup)
from spark_memprobe.cli import EXIT_BAD_INPUT, EXIT_PREFLIGHT_FAILS, EXIT_USAGE, main

PAGE = mmap.PAGESIZE
FLUSH = 64 * PAGE * os.cpu_count()     # memory.stat per-CPU batch error (docs/facts.md#f-stat-lazy)


def preflight(capsys, *argv) -> tuple[int, dict]:
    """--as-integrated: the same UMA arithmetic on a host with a discrete GPU (the H200) as on
    one with none (CI), where it is the default."""
    capsys.readouterr()
    rc = main(["preflight", *argv, "--json", "--as-integrated"])
    return rc, json.loads(capsys.readouterr().out)


def test_as_integrated_is_said_and_the_default_without_gpu_says_why(capsys):
    rc, forced = preflight(capsys, "--engine", "vllm")
    assert forced["state"]["modelled_uma"] and any("on request" in n for n in forced["state"]["notes"]), forced
    capsys.readouterr()
    main(["preflight", "--engine", "vllm", "--json"])
    plain = json.loads(capsys.readouterr().out)
    if plain["state"]["platform"] in ("discrete", "coherent-numa"):
        assert not plain["state"]["modelled_uma"] and plain["prediction"]["free_basis"] == "device free"
    else:
        assert plain["state"]["modelled_uma"] and not any("on request" in n for n in plain["state"]["notes"])


def blocker(d: dict, kind: str, name: str):
    return next((b for b in d["blockers"] if b["kind"] == kind and b["name"] == name), None)


def test_file_in_a_cgroup_is_ranked_by_its_bytes_and_evict_removes_them(live_cgroup, read_file, capsys):
    args = (f"cgroup:{live_cgroup.path}", "--engine", "vllm", "--uma-free", "MemFree", "--model", read_file)
    rc, before = preflight(capsys, *args)
    assert rc in (0, EXIT_PREFLIGHT_FAILS)
    assert before["prediction"]["free_basis"] == "MemFree" and before["state"]["modelled_uma"]
    f = blocker(before, "file", read_file)
    assert abs(f["bytes"] - FILE_MIB * MiB) <= PAGE
    sizes = [b["bytes"] for b in before["blockers"]]
    assert sizes == sorted(sizes, reverse=True)
    # the cgroup's page cache is this file: named, so not counted again as unnamed page cache
    assert before["state"]["target_page_cache_bytes"] >= f["bytes"] - FLUSH
    mine = blocker(before, "page_cache", f"page cache charged to {live_cgroup.path}")
    assert mine is None or mine["bytes"] < FILE_MIB * MiB // 2
    fix = next(r for r in before["remedies"] if r["command"].startswith("memprobe evict "))
    assert fix["command"] == f"memprobe evict {read_file}" and fix["frees_bytes"] == f["bytes"]
    assert before["prediction"]["settings"]["weights_bytes"] == FILE_MIB * MiB

    capsys.readouterr()
    assert main(["evict", read_file]) == 0
    rc, after = preflight(capsys, *args)
    gone = blocker(after, "file", read_file)
    assert gone is None or gone["bytes"] <= PAGE                       # dropped: ranked no more
    assert f["bytes"] - (gone["bytes"] if gone else 0) >= FILE_MIB * MiB - PAGE
    assert not any(r["command"].startswith("memprobe evict ") for r in after["remedies"])
    # the file now has to be read while loading: a MemFree-based vLLM charges it to non-torch memory
    assert after["prediction"]["settings"]["page_cache_growth_bytes"] >= FILE_MIB * MiB - PAGE


def test_memavailable_basis_does_not_rank_page_cache_by_file(read_file, capsys):
    rc, d = preflight(capsys, "--engine", "vllm", "--model", read_file)
    assert d["prediction"]["free_basis"] == "MemAvailable"
    assert blocker(d, "file", read_file) is None
    assert not any(r["command"].startswith("memprobe evict") for r in d["remedies"])


def test_exit_8_and_the_engines_own_words_when_the_check_fails(capsys):
    rc, d = preflight(capsys, "--engine", "vllm", "--gpu-memory-utilization", "1", "--uma-free", "MemFree")
    assert rc == EXIT_PREFLIGHT_FAILS and d["prediction"]["fails"] and d["prediction"]["admission_ok"] is False
    assert re.search(r"Free memory on device cuda:0 \([\d.]+/[\d.]+ GiB\) on startup is less than desired GPU "
                     r"memory utilization \(1\.0, [\d.]+ GiB\)", d["prediction"]["message"])
    u = d["prediction"]["passing"]["gpu_memory_utilization"]
    assert any(r["command"] == f"--gpu-memory-utilization {u:g}" and r["passes"] for r in d["remedies"])
    rc, d = preflight(capsys, "--engine", "vllm", "--gpu-memory-utilization", "0.01")
    assert rc == 0 and d["prediction"]["admission_ok"] is True
    capsys.readouterr()
    assert main(["preflight", "--engine", "vllm", "--gpu-memory-utilization", "1", "--uma-free", "MemFree"]) == 8
    out = capsys.readouterr().out
    assert "WILL FAIL" in out and "the engine will say: Free memory on device" in out


def test_bad_input_is_one_line_with_its_exit_code(tmp_path, capsys):
    assert main(["preflight", "--engine", "vllm", "--mem-fraction-static", "0.8"]) == EXIT_USAGE
    assert "--mem-fraction-static is a setting of sglang, not of vllm" in capsys.readouterr().err
    os.mkfifo(tmp_path / "fifo")                 # opening it would block: refused unopened
    assert main(["preflight", "--engine", "trtllm", "--model", str(tmp_path / "fifo")]) == EXIT_BAD_INPUT
    assert main(["preflight", "--engine", "trtllm", "--model", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.count("\n") == 2
