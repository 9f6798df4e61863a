"""A call that must not hold up its caller: it runs in a daemon thread and the caller waits
for it at most a deadline. What a target controls (a file in its root, a FUSE server, its
mmap_lock behind /proc/<pid>/maps, an engine socket that answers a byte at a time) can make a
call last forever; the caller goes on and picks the result up later, or gives up on it.

A daemon thread, not concurrent.futures: the interpreter joins executor threads at exit, so
one stuck call would keep memprobe from exiting."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Background:
    def __init__(self, fn: Callable[[], Any], name: str):
        self._fn = fn
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self.started = time.monotonic()
        self.overdue_said = False        # the caller has said once that it is late
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to whoever takes the result
            self._error = e
        finally:
            self._done.set()

    def wait(self, timeout_s: float) -> bool:
        """True once the call has returned (waiting at most timeout_s for it)."""
        return self._done.wait(timeout_s)

    def done(self) -> bool:
        return self._done.is_set()

    def age_s(self) -> float:
        return time.monotonic() - self.started

    def result(self) -> Any:
        """The call's value, or its exception raised here. Only once done()."""
        if self._error is not None:
            raise self._error
        return self._value
