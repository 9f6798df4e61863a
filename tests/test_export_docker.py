"""memprobe export against a real Docker engine (a private dockerd, tests/engines/dockerd.py):
with --all-containers a container that runs gets series labelled with its name, ID and cgroup,
its anonymous memory within 5 % of what it touched and within 2 % of the ledger built here;
`docker stop` removes its series and `docker start` brings them back, in the --all-containers
exporter and in one that was given the container's name, neither restarted."""
from __future__ import annotations

import os

import pytest

from engines.dockerd import IMAGE
from test_export_live import Exporter, close, pick, wait_for
from spark_memprobe.ledger import build_ledger
from spark_memprobe.samples import HostInfo, PlatformProfile
from spark_memprobe.sources.sampler import PureSampler

pytestmark = [pytest.mark.docker, pytest.mark.live]
MiB = 1 << 20
HOG_MIB = 96


def test_containers_come_and_go_with_their_names(dockerd):
    hog = dockerd.run_memhog("memprobe-export-hog", HOG_MIB)
    every = fixed = None
    try:
        every = Exporter("--all-containers", "--interval", "0.3s", "--relist", "0.3s", env=dockerd.env())
        fixed = Exporter("--interval", "0.3s", hog.name, env=dockerd.env())
        mine = lambda e: pick(e.scrape(), "memprobe_ledger_bytes", container="memprobe-export-hog",  # noqa: E731
                              row="anon", view="current")
        got = wait_for("the container's series", lambda: mine(every), timeout=15)
        lab = got[0].labels
        assert (lab["kind"], lab["target"], lab["container_id"], lab["cgroup"]) == \
            ("container", hog.name, hog.id, f"/docker/{hog.id}")
        ss = every.scrape()
        info = pick(ss, "memprobe_target_info", container_id=hog.id)
        assert len(info) == 1 and info[0].labels["engine"] == "docker" and info[0].labels["image"] == IMAGE
        with PureSampler(cgroup=f"/docker/{hog.id}") as smp:
            lg = build_ledger(HostInfo(page_size=os.sysconf("SC_PAGE_SIZE"), platform=PlatformProfile("no-gpu")),
                              smp.sample())
        anon = got[0].value
        print(f"\ncontainer {hog.name}: anon {anon:.0f} bytes exported, ledger here {lg.cell('anon', 'current')}, "
              f"touched {HOG_MIB * MiB}")
        assert close(anon, lg.cell("anon", "current")) and close(anon, HOG_MIB * MiB, 0.05), anon
        fl = wait_for("the fixed exporter's series", lambda: mine(fixed), timeout=15)[0].labels
        assert fl["target"] == hog.name and fl["container_id"] == hog.id
        hog.stop(timeout=10)
        wait_for("series to go (all containers)", lambda: not mine(every), timeout=15)
        wait_for("series to go (fixed)", lambda: not mine(fixed), timeout=15)
        assert pick(fixed.scrape(), "memprobe_target_up", target=hog.name)[0].value == 0
        hog.start()
        wait_for("series back (all containers)", lambda: mine(every), timeout=20)
        wait_for("series back (fixed)", lambda: mine(fixed), timeout=20)
        assert pick(fixed.scrape(), "memprobe_target_up", target=hog.name)[0].value == 1
        assert every.p.poll() is None and fixed.p.poll() is None          # neither was restarted
    finally:
        for e in (every, fixed):
            if e is not None:
                e.stop()
                print("\n".join(e.lines))
        hog.remove(force=True)
