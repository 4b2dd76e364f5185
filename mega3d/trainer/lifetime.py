"""How a process ends. A helper process must not outlive the process that started it (ingest workers,
`mega3d run`'s pipeline process): an orphan would go on writing beside whatever starts next. A training
process takes SIGTERM as notice (a node about to be preempted, a pod being deleted) rather than as its end:
it finishes its step and saves where it is first."""

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


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped on notice after saving; to be started again, not a failure
PREEMPTED = "preempted: "  # how rank 0 says so in the job's log


class StopNotice:
    """Notes SIGTERM instead of dying of it: `given` says whether it came. The process must act on it soon
    (Kubernetes kills a container its grace period after the signal; torchrun, its workers 30 s after)."""

    def __init__(self) -> None:
        self.given = False
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.given = True
