#!/usr/bin/env python3
"""Issue 20's question: would Textual (Rich's application framework) draw the live screen for
less CPU or less code than the hand-written terminal loop in spark_memprobe/cli/tui.py? Side by
side in one run, in real terminals (tmux), on the same target at 10 Hz:

  hand-written  `memprobe attach TARGET --interval 100ms` (Rich Live + cbreak + select)
  Textual       the same feed, ledger and render_screen() in a Textual App: one Static widget
                updated from set_interval(0.1), keys as Textual bindings (this file, --app)

    sudo .venv/bin/python scripts/bench/bench_textual.py [--seconds 20] [--size 80x24 --size 200x60]

Textual is not a dependency of memprobe: install it into the venv for this benchmark only
(`.venv/bin/pip install textual`). Each number is utime+stime of the screen's process over the
measured window after a warm-up (scripts/bench/bench_tui.py does the same)."""
import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def app_main(query: str) -> None:
    """The Textual prototype: what `attach` does, drawn by Textual."""
    from textual.app import App
    from textual.widgets import Static

    from spark_memprobe.cli.tui import apply_item
    from spark_memprobe.feed.live import LiveFeed
    from spark_memprobe.sources.targets import Resolver
    from spark_memprobe.views.tui import TuiState, render_screen

    r = Resolver()
    feed = LiveFeed(r, r.resolve(query))
    st = TuiState(host=feed.header.host, target=feed.target_text(), probes=None)

    class Screen(App):
        BINDINGS = [("q", "quit", "quit"), ("question_mark", "help", "help"), ("p", "pause", "pause")]

        def compose(self):
            self.view = Static()
            yield self.view

        def on_mount(self):
            self.set_interval(0.1, self.tick)

        def tick(self):
            if not st.paused:
                item, _ = feed.tick()
                apply_item(st, item, feed.header, 0.9)
            self.view.update(render_screen(st, self.size.width, self.size.height))

        def action_help(self):
            st.show_help = not st.show_help

        def action_pause(self):
            st.paused = not st.paused

    try:
        Screen().run()
    finally:
        feed.close()


def main():
    from bench_tui import CLI, find_pid, measure, print_rows
    from livecg import MiB, LiveCgroup
    from tmuxterm import Tmux

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", action="append", default=None)
    ap.add_argument("--app", metavar="TARGET", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.app:
        return app_main(a.app)
    try:
        import textual
    except ImportError:
        sys.exit("bench_textual: Textual is not installed (.venv/bin/pip install textual)")
    cg = LiveCgroup()
    tmp = tempfile.mkdtemp()
    rows = []
    try:
        cg.start_child()
        cg.do(f"anon {64 * MiB}")
        target = f"cgroup:{cg.path}"
        for size in a.size or ["80x24", "200x60"]:
            w, h = map(int, size.split("x"))
            for name, argv, pattern in (
                    ("hand-written (Rich Live)", [*CLI, "attach", target, "--interval", "100ms", "--no-bpf"],
                     f"attach {target}"),
                    (f"Textual {textual.__version__}", [sys.executable, os.path.abspath(__file__), "--app", target],
                     f"app {target}")):
                t = Tmux(argv, w, h)
                try:
                    t.wait_for("where the bytes are counted", timeout=60)
                    rows.append((f"{name} {size}", measure(find_pid(pattern), a.seconds)))
                    t.send("q")
                finally:
                    t.close()
        print_rows("screen at 10 Hz (sample + ledger + render)", rows, a.seconds)
    finally:
        cg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
