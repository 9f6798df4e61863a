"""What a new user meets first (issue 20): the README's two commands as a fresh root machine runs
them, `ls` where no container engine answers, `replay --help`, and the report's opening sentence."""
import inspect
import json
import os
import re
import subprocess
import sys

import pytest

from spark_memprobe.cli import SUBCOMMANDS
from spark_memprobe.views.ls import render_ls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def memprobe(*args, env=None):
    return subprocess.run([sys.executable, "-m", "spark_memprobe.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


def readme_command(section: str) -> str:
    """The one line of the first code block under the README heading that starts with `section`."""
    text = open(os.path.join(ROOT, "README.md")).read()
    body = re.search(rf"^## {re.escape(section)}.*?^```\n(.*?)^```", text, re.M | re.S)
    assert body, f"README has no code block under '## {section}'"
    lines = body.group(1).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def programs(command: str) -> list[list[str]]:
    return [part.split() for part in command.split("&&")]


@pytest.mark.parametrize("section", ["Install and run", "Test"])
def test_readme_commands_run_as_root_without_sudo(section):
    for argv in programs(readme_command(section)):
        assert argv[0] != "sudo", f"{section}: a fresh root machine has no sudo: {argv}"
        if argv[0].startswith("scripts/"):
            path = os.path.join(ROOT, argv[0])
            assert os.path.isfile(path) and os.access(path, os.X_OK), f"{argv[0]} missing or not executable"
            assert open(path).readline().startswith("#!"), f"{argv[0]} has no #! line"
        else:
            assert argv[0] == ".venv/bin/memprobe", argv       # what setup.sh installs
    text = open(os.path.join(ROOT, "README.md")).read()
    assert "sudo" in text.split("## Test")[0], "the README no longer says how a non-root user runs them"


def test_readme_test_command_is_what_ci_runs():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    called = re.search(r'^exec "\$\(dirname "\$0"\)/\.\./(\S+)"', ci, re.M)
    assert called, ".ci/run no longer execs a script of the repository"
    assert programs(readme_command("Test")) == [[called.group(1)]]


@pytest.mark.skipif(os.geteuid() != 0, reason="the README's run command is for root (it creates a cgroup)")
def test_readme_run_command_starts_the_demo():
    """The second program of the install command, run as written plus one sample as JSON (a terminal
    would get the live screen); setup.sh itself is not run here: it installs packages (CI's fresh
    clone runs it through scripts/test.sh)."""
    argv = programs(readme_command("Install and run"))[-1]
    exe = os.path.join(ROOT, argv[0])
    if not os.access(exe, os.X_OK):
        pytest.skip(f"{argv[0]} not installed: scripts/setup.sh has not run in this checkout")
    r = subprocess.run([exe, *argv[1:], "--json", "--count", "1"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert '"type": "sample"' in r.stdout and "memprobe-demo-" in r.stdout


def test_readme_command_table_lists_every_subcommand():
    text = open(os.path.join(ROOT, "README.md")).read()
    table = text.split("## Commands", 1)[1]
    listed = set(re.findall(r"^\| `memprobe ([\w-]+)", table, re.M))
    assert listed == set(SUBCOMMANDS), set(SUBCOMMANDS) ^ listed


# --------------------------------------------------------------------------- ls with no engine answering
def test_ls_without_engines_suggests_demo_pid_and_cgroups(tmp_path):
    """Every engine endpoint pointed at a socket that does not exist, as test_docker.py does."""
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/docker.sock", CONTAINER_HOST=f"unix://{tmp_path}/podman.sock",
               CONTAINERD_ADDRESS=f"{tmp_path}/containerd.sock")
    env.pop("MEMPROBE_ENGINES", None)
    r = memprobe("ls", env=env)
    assert r.returncode == 0, r.stderr
    asked = r.stdout.split("\nasked:\n", 1)[1]
    if "answered" in asked:
        pytest.skip(f"an engine answered at an endpoint the environment cannot redirect: {asked}")
    assert f"docker at unix://{tmp_path}/docker.sock: socket {tmp_path}/docker.sock missing" in asked
    for form in ("memprobe attach --demo", "memprobe attach PID", "memprobe attach cgroup:/PATH"):
        assert form in r.stdout
    examples = re.findall(r"^    memprobe attach cgroup:(\S+)  \((.+)\)$", r.stdout, re.M)
    assert examples, r.stdout                   # this host has memory cgroups with memory in them
    from spark_memprobe.sources.cgroupfs import CgroupFS
    cg = CgroupFS()
    assert all(os.path.isdir(cg.directory(p)) for p, _ in examples)


def test_ls_examples_are_the_largest_leaf_cgroups():
    base = os.path.join(FIX, "paths-v2-systemd")
    r = memprobe("--proc", f"{base}/proc", "--cgroup-root", f"{base}/sys/fs/cgroup", "ls",
                 env=dict(os.environ, MEMPROBE_ENGINES="none"))
    assert r.returncode == 0, r.stderr
    examples = re.findall(r"^    memprobe attach cgroup:(\S+)  \((.+)\)$", r.stdout, re.M)
    assert examples[0][0].endswith("/cri-containerd-4c1b343cc944fde5b7ff580d9d968f3a96a8d5d25820f4594979afd0edda8cdc.scope")
    sizes = [s for _, s in examples]
    assert sizes == ["900 MiB", "300 MiB", "200 MiB"], examples     # leaves only: the 901 MiB pod is a parent


def test_ls_nothing_found_says_what_else_to_attach():
    out = render_ls([], ["engines: not asked: MEMPROBE_ENGINES=none"], [("/big.slice/x.service", 3 << 30)])
    lines = out.splitlines()
    assert lines[0] == "no attachable targets found"
    assert "  memprobe attach --demo" in out and "memprobe attach PID" in out
    assert "    memprobe attach cgroup:/big.slice/x.service  (3 GiB)" in lines
    assert out.index("memprobe attach --demo") < out.index("asked:")
    assert "memprobe attach" not in render_ls([], [], None)      # not asked for: nothing suggested
    assert "cgroup:/x\\x1b[2Jy.scope  (1 MiB)" in render_ls([], [], [("/x\x1b[2Jy.scope", 1 << 20)])


# --------------------------------------------------------------------------- replay --help
def test_replay_help_names_the_json_keys_it_prints(tmp_path):
    from report_recordings import fixture_recording
    r = memprobe("replay", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    said = re.search(r"--json print one JSON object per sample: (.*?) and ledger \(its (.*?)\)", text)
    assert said, text
    top = [k.strip() for k in said.group(1).split(",")] + ["ledger"]
    inside = said.group(2).replace(" and ", ", ").replace("KV budget", "kv").split(", ")
    rec = fixture_recording("h100-cgroup2-scenario", str(tmp_path / "run.db"))
    r = memprobe("replay", rec, "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout.splitlines()[0])
    assert list(obj) == top                          # findings are not a key of their own
    assert set(inside) <= set(obj["ledger"]) and "findings" in inside


# --------------------------------------------------------------------------- the report's first sentence
@pytest.mark.parametrize("scenario,rule", [("h100-cgroup2-scenario", "gpu_uncharged"),
                                           ("h100-inference-scenario", "gpu_uncharged"),
                                           ("gb10-synthetic", "uma_tool_sum")])
def test_report_verdict_opens_with_cause_and_remedy(tmp_path, scenario, rule):
    from report_recordings import fixture_recording
    from spark_memprobe.analysis.report import analyse, open_recording
    from spark_memprobe.views.report_doc import REMEDIES, build_report
    from spark_memprobe.views.report_html import render_html
    from spark_memprobe.views.report_md import render_markdown
    rec = open_recording(fixture_recording(scenario, str(tmp_path / "run.db")))
    try:
        data = analyse(rec)
    finally:
        rec.close()
    top = data.findings[0].finding
    assert top.rule == rule
    doc = build_report(data)
    md = render_markdown(doc)
    first = md.split("## Verdict\n", 1)[1].strip().split("\n\n")[0]
    assert first.startswith(f"**{top.title[0].upper()}{top.title[1:]}** (largest finding, {rule}, at t=")
    assert f"; **remedy:** {REMEDIES[rule]}." in first
    assert len(re.findall(r"\.(?:\s|$)", first)) == 1, first          # one sentence
    rest = md.split(first, 1)[1]
    assert "(memory.current)" in rest and "What memory.current holds at the peak" in rest   # the evidence follows
    html = render_html(doc)
    assert html.index("remedy:") < html.index("What memory.current holds at the peak")


def test_every_rule_has_a_remedy():
    """A rule without an entry in REMEDIES must write its own "remedy:" evidence line."""
    from spark_memprobe.ledger.model import Finding
    from spark_memprobe.ledger.rules import RULES
    from spark_memprobe.views.report_doc import REMEDIES, remedy
    for fn in RULES:
        assert fn.__name__ in REMEDIES or '"remedy: ' in inspect.getsource(fn), fn.__name__
    f = Finding("reserve_hides_free", "t", 1, "info", "high",
                evidence=["min_free_kbytes 67584", "remedy: lower vm.min_free_kbytes (sysctl -w vm.min_free_kbytes=N)."])
    assert remedy(f) == "lower vm.min_free_kbytes (sysctl -w vm.min_free_kbytes=N)"
