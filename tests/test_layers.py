"""Layers go one way: sample types < sources < recording < ledger < views < cli. Recordings
replay as they ran only if recording, ledger, feed and views never read the machine."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "spark_memprobe")
NEVER_SOURCES = ["samples.py", "events.py", "recording.py", "ledger", "views"]


def modules():
    for name in NEVER_SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            yield from (os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".py"))
        else:
            yield path


def imported(path: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: os.path.relpath(p, ROOT))
def test_never_imports_sources_or_cli(path):
    for n in imported(path):
        parts = n.lstrip(".").split(".")
        assert "sources" not in parts and "cli" not in parts, f"{path} imports {n}"


def test_the_check_sees_every_layer():
    found = list(modules())
    assert any("/ledger/" in p for p in found) and any("/views/report" in p for p in found)
    assert len(found) > 25
