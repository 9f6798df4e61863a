"""Page cache of named files, live: sources/pagecache.py cached_bytes() (mincore) and evict()
(posix_fadvise DONTNEED) on real files read into a real memory cgroup (tests/livecg.py), and
`memprobe evict`."""
from __future__ import annotations

import json
import mmap
import os
import socket

import pytest

from livecg import MiB, fresh_file, resident_bytes
from spark_memprobe.cli import main
from spark_memprobe.sources.pagecache import NotRegularFile, cached_bytes, evict

PAGE = mmap.PAGESIZE
FILE_MIB = 32


@pytest.fixture
def read_file(live_cgroup, tmp_path):
    """A FILE_MIB file read by a child in a test cgroup: all of it in the page cache."""
    path = fresh_file(str(tmp_path), FILE_MIB * MiB)
    live_cgroup.start_child()
    live_cgroup.do(f"read {path}")
    return path


def test_cached_bytes_counts_a_read_file_to_the_page(read_file):
    cached, size = cached_bytes(read_file)
    assert size == FILE_MIB * MiB
    assert abs(cached - size) <= PAGE
    assert cached == resident_bytes(read_file)


def test_cached_bytes_of_a_cold_file_is_zero(tmp_path):
    path = fresh_file(str(tmp_path), 4 * MiB)
    assert cached_bytes(path) == (resident_bytes(path), 4 * MiB)
    assert cached_bytes(path)[0] <= PAGE


def test_cached_bytes_of_a_partial_last_page_counts_only_the_file(tmp_path):
    path = tmp_path / "odd"
    path.write_bytes(b"x" * (PAGE + 10))
    assert cached_bytes(str(path)) == (PAGE + 10, PAGE + 10)
    (tmp_path / "empty").write_bytes(b"")
    assert cached_bytes(str(tmp_path / "empty")) == (0, 0)


def test_symlink_fifo_socket_and_directory_are_refused_without_opening(tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"x" * PAGE)
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")            # opening it for reading would block forever
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    try:
        for name in ("link", "fifo", "sock", "."):
            with pytest.raises(NotRegularFile):
                cached_bytes(str(tmp_path / name))
            with pytest.raises(NotRegularFile):
                evict(str(tmp_path / name))
    finally:
        s.close()
    with pytest.raises(FileNotFoundError):
        cached_bytes(str(tmp_path / "missing"))


def test_evict_frees_a_read_file_and_leaves_other_files_alone(read_file, tmp_path, live_cgroup):
    other = fresh_file(str(tmp_path), 8 * MiB)
    live_cgroup.do(f"read {other}")
    other_before = resident_bytes(other)
    r = evict(read_file)
    assert abs(r.cached_before_bytes - FILE_MIB * MiB) <= PAGE
    assert abs(r.freed_bytes - FILE_MIB * MiB) <= PAGE
    assert r.cached_after_bytes <= PAGE and resident_bytes(read_file) <= PAGE
    assert r.stayed_mapped_bytes == 0 and r.mappers == []
    assert resident_bytes(other) == other_before >= 8 * MiB - PAGE


def test_a_mapped_file_stays_and_is_reported_as_mapped_with_its_process(read_file, live_cgroup):
    live_cgroup.do(f"map {read_file}")         # every page mapped by the child
    r = evict(read_file)
    assert r.freed_bytes <= PAGE
    assert abs(r.stayed_mapped_bytes - FILE_MIB * MiB) <= PAGE
    assert r.stayed_dirty_bytes <= PAGE
    assert [m.pid for m in r.mappers] == [live_cgroup.child.pid]
    assert resident_bytes(read_file) >= FILE_MIB * MiB - PAGE


def test_dirty_pages_are_freed_once_written_back(tmp_path):
    path = str(tmp_path / "dirty")
    with open(path, "wb") as f:             # written, not synced: dirty in the page cache
        f.write(os.urandom(4 * MiB))
    r = evict(path)
    assert r.cached_before_bytes >= 4 * MiB - PAGE
    # DONTNEED starts writeback and skips dirty pages; the retry frees them once clean
    assert r.freed_bytes + r.stayed_dirty_bytes == r.cached_before_bytes - r.stayed_mapped_bytes
    assert r.freed_after_writeback_bytes + r.stayed_dirty_bytes > 0
    assert r.stayed_mapped_bytes == 0


def test_cli_evict_json_and_text(read_file, live_cgroup, tmp_path, capsys):
    other = fresh_file(str(tmp_path), 8 * MiB)
    live_cgroup.do(f"read {other}")
    live_cgroup.do(f"map {other}")
    assert main(["evict", "--json", read_file, other]) == 0
    out = json.loads(capsys.readouterr().out)
    by = {f["path"]: f for f in out["files"]}
    assert abs(by[read_file]["freed_bytes"] - FILE_MIB * MiB) <= PAGE
    assert by[other]["stayed_mapped_bytes"] >= 8 * MiB - PAGE
    assert by[other]["mappers"][0]["pid"] == live_cgroup.child.pid
    assert out["freed_bytes"] == sum(f["freed_bytes"] for f in out["files"])
    live_cgroup.do(f"read {read_file}")
    assert main(["evict", read_file, other]) == 0
    text = capsys.readouterr().out
    assert "mapped by" in text and str(live_cgroup.child.pid) in text and "freed" in text


def test_cli_evict_refuses_links_fifos_and_directories(tmp_path, capsys):
    real = tmp_path / "real"
    real.write_bytes(b"x" * PAGE)
    (tmp_path / "link").symlink_to(real)
    os.mkfifo(tmp_path / "fifo")
    for bad in ("link", "fifo", "."):
        assert main(["evict", str(tmp_path / bad)]) == 2
        assert "not" in capsys.readouterr().err
    assert main(["evict", str(tmp_path / "missing")]) == 3
