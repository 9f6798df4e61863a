"""Shared test setup. Fixture trees live in tests/fixtures; live tests create real cgroups."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture
def live_cgroup():
    """A fresh memory cgroup on this host (tests/livecg.py), removed after the test even when
    it failed; skipped with the reason where cgroups cannot be created."""
    from livecg import LiveCgroup
    if os.geteuid() != 0:
        pytest.skip("needs root to create a memory cgroup")
    try:
        cg = LiveCgroup()
    except RuntimeError as e:
        pytest.skip(str(e))
    try:
        yield cg
    finally:
        cg.cleanup()          # kills the child and removes the cgroup


@pytest.fixture(scope="session")
def dockerd():
    """A private Docker engine with the test image (tests/engines/dockerd.py, docs/facts.md#f-engines),
    shared by every Docker test of the session and stopped at its end."""
    from engines.dockerd import PrivateDockerd, why_not_available
    why = why_not_available()
    if why:
        pytest.skip(why)
    d = PrivateDockerd()
    try:
        d.start()
        d.build_image()
        yield d
    finally:
        problems = d.stop()
        assert not problems, f"teardown left things behind: {problems}"
