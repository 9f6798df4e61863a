"""Silence what libbcc/libbpf print on file descriptor 2 while we try something that may fail
(the failure is reported as a refusal with its reason instead)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def quiet_stderr(keep: list | None = None):
    """Redirect fd 2 to a temporary file; its text goes into `keep` (a list) if given."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if keep is not None:
                tmp.seek(0)
                keep.append(tmp.read().decode("utf-8", "replace"))
