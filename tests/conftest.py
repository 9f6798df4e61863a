"""Shared test setup. Fixture trees live in tests/fixtures; live tests create real cgroups."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
