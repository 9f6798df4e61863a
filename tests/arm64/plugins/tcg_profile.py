"""pytest plugin for the arm64 qemu tier (scripts/qemu/arm64_tier.py loads it with -p):
under TCG emulation a single example can take longer than hypothesis's default 200 ms
deadline, which would fail a test for speed, not correctness. No deadline there; the
number of examples each test asks for is unchanged."""
from hypothesis import settings

settings.register_profile("tcg", deadline=None)
settings.load_profile("tcg")
