"""A helper process that must not outlive the process that started it (ingest workers, `mega3d run`'s
pipeline process): an orphan would go on writing beside whatever starts next."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent(parent: int, signum: signal.Signals) -> None:
    """Have the kernel send this process `signum` when its parent ends, however it ends (Linux; elsewhere
    callers also watch their parent's pid). A parent that ended before the request took effect is caught
    here: the signal is sent at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
