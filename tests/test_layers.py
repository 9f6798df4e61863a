"""Layers go one way: sample types < sources < recording < ledger < feed < analysis < views <
cli (docs/architecture.md). Recordings replay as they ran only if recording, ledger and views
never read the machine; feed never reaches up into views or cli; and no module imports, even
from inside a function, a module that imports it back."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "spark_memprobe")
NEVER_SOURCES = ["samples.py", "probe_report.py", "recording.py", "ledger", "analysis", "views"]
NEVER_VIEWS_OR_CLI = ["feed", "analysis"]


def modules(names=NEVER_SOURCES):
    for name in names:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):             # subpackages too (analysis/engines/)
            for d, _, files in sorted(os.walk(path)):
                yield from (os.path.join(d, n) for n in sorted(files) if n.endswith(".py"))
        else:
            yield path


def imported(path: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            # `from .. import sources` names the package in the imported names
            names += [f"{base}.{a.name}" if node.module else base + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: os.path.relpath(p, ROOT))
def test_never_imports_sources_or_cli(path):
    for n in imported(path):
        parts = n.lstrip(".").split(".")
        assert "sources" not in parts and "cli" not in parts, f"{path} imports {n}"


@pytest.mark.parametrize("path", list(modules(NEVER_VIEWS_OR_CLI)), ids=lambda p: os.path.relpath(p, ROOT))
def test_feed_never_imports_views_or_cli(path):
    for n in imported(path):
        parts = n.lstrip(".").split(".")
        assert "views" not in parts and "cli" not in parts, f"{path} imports {n}"


def test_only_recording_py_runs_sql():
    """recording.py is the only code that knows the file: no other module imports sqlite3 or runs
    a statement (`.execute(`, `.executemany(`, `.executescript(`)."""
    seen = 0
    for d, _, names in os.walk(ROOT):
        for n in names:
            path = os.path.join(d, n)
            if not n.endswith(".py") or os.path.samefile(path, os.path.join(ROOT, "recording.py")):
                continue
            seen += 1
            tree = ast.parse(open(path).read())
            assert not [m for m in imported(path) if m.split(".")[0] == "sqlite3"], f"{path} imports sqlite3"
            calls = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("execute")]
            assert not calls, f"{path} runs SQL at lines {calls}"
    assert seen > 80


def test_the_check_sees_every_layer():
    found = list(modules())
    assert any("/ledger/" in p for p in found) and any("/views/report" in p for p in found)
    assert len(found) > 25
    feed = [os.path.basename(p) for p in modules(NEVER_VIEWS_OR_CLI)]
    assert {"live.py", "multi.py", "recorder.py", "follow.py", "ticker.py"} <= set(feed)


# -- import cycles ---------------------------------------------------------------------------------

def import_graph(root: str, package: str) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (function bodies too).
    `from X import name` counts as importing X.name when that is a module, else X."""
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, n), root)[:-3].split(os.sep)
                mod = ".".join([package] + (rel[:-1] if rel[-1] == "__init__" else rel))
                files[mod] = os.path.join(d, n)
    graph = {}
    for mod, path in files.items():
        here = mod.split(".") if path.endswith("__init__.py") else mod.split(".")[:-1]
        out = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        graph[mod] = {m for m in out if m in files and m != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = import_graph(ROOT, "spark_memprobe")
    assert len(graph) > 80 and "spark_memprobe.sources.native" in graph["spark_memprobe.sources.sampler"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    graph = import_graph(str(pkg), "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import x\n")
    assert find_cycle(import_graph(str(pkg), "pkg")) is None
