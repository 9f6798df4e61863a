"""A real terminal for TUI tests: tmux on a private socket, one session per test."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid


class Tmux:
    def __init__(self, argv: list[str], width: int = 100, height: int = 30, env: dict | None = None):
        if not shutil.which("tmux"):
            raise RuntimeError("tmux not installed")
        self.sock = f"memprobe-test-{uuid.uuid4().hex[:8]}"
        self.tmp = tempfile.mkdtemp(prefix="memprobe-tmux-")
        self.rc_file = os.path.join(self.tmp, "rc")
        # sh runs the command with its arguments as given ("$@"), then keeps the pane open
        wrapper = ["/bin/sh", "-c", '"$@"; echo $? > "$RC_FILE"; sleep 600', "sh", *argv]
        e = dict(env or os.environ, RC_FILE=self.rc_file, TERM="xterm-256color")
        subprocess.run(["tmux", "-L", self.sock, "-f", "/dev/null", "new-session", "-d", "-s", "t",
                        "-x", str(width), "-y", str(height), "--", *wrapper], env=e, check=True)

    def capture(self, colours: bool = False) -> str:
        """The screen as text; colours: with the SGR escapes of its colours and attributes (-e)."""
        return subprocess.run(["tmux", "-L", self.sock, "capture-pane", "-p", *(["-e"] if colours else []), "-t", "t"],
                              capture_output=True, text=True).stdout

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        end = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if all(t in screen for t in texts):
                return screen
            if time.monotonic() > end:
                raise AssertionError(f"never saw {texts!r}; screen:\n{screen}")
            time.sleep(0.2)

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "-L", self.sock, "send-keys", "-t", "t", *keys], check=True)

    def rc(self, timeout: float = 30.0) -> int:
        end = time.monotonic() + timeout
        while not os.path.exists(self.rc_file) or not open(self.rc_file).read().strip():
            if time.monotonic() > end:
                raise AssertionError(f"the command did not exit; screen:\n{self.capture()}")
            time.sleep(0.1)
        return int(open(self.rc_file).read())

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
