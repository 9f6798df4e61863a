"""Fixtures of the arm64 tier (scripts/qemu/arm64_tier.py, docs/testing.md).

Tests marked `arm64` run on an aarch64 host as root with pure cgroup v2 (the tier's qemu guest,
or a Grace host). Elsewhere they skip with the reason; inside the tier MEMPROBE_REQUIRE_ARM64=1
turns those skips into failures, so the tier cannot pass by skipping."""
from __future__ import annotations

import os
import platform
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "v2"))

import v2cg  # noqa: E402


def skip_or_fail(why: str):
    if os.environ.get("MEMPROBE_REQUIRE_ARM64") == "1":
        pytest.fail(f"MEMPROBE_REQUIRE_ARM64=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def arm64_host() -> str:
    """The v2 root of an aarch64 host we may create cgroups on (as root)."""
    if platform.machine() != "aarch64":
        skip_or_fail(f"runs on aarch64, this is {platform.machine()} "
                     "(the arm64 qemu tier: scripts/qemu/arm64_tier.py)")
    root, why = v2cg.v2_state()
    if root is None:
        skip_or_fail(why)
    return root


@pytest.fixture
def v2_cgroups(arm64_host):
    cgs = v2cg.Cgroups(arm64_host)
    yield cgs
    left = cgs.remove_all()
    assert not left, f"could not remove test cgroups {left}"
