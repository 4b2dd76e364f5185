"""Run a spec's pipeline on this machine, as one unit that can be stopped whole.

`mega3d run` supervises (`supervise`) a pipeline process (`python -m mega3d.pipelines.local`) that it starts
in a session of its own: there kfp.local executes the steps as subprocesses of the current environment, and
each training step runs its TorchX app with the `local_cwd` scheduler (torchrun, then the trainers).

Every process of the run inherits RUN_MARK=<token> in its environment, whatever process group or session it
makes for itself (TorchX starts each replica in a new session): the run is stopped by signalling every
process that carries the mark, SIGTERM first, SIGKILL to what is left after STOP_GRACE_SECONDS. The
supervisor does this on SIGINT or SIGTERM; if the supervisor is killed outright, the kernel sends the
pipeline process SIGTERM (PR_SET_PDEATHSIG) and it does the same.

The pipeline process sends each line of its output to the supervisor tagged: `L` for the run's log only,
`S` for what `mega3d run` shows: a line when a step starts and ends, and the steps' own messages (training
progress, results), without KFP's bookkeeping, the executor's dumps or tracebacks. A step that fails leaves
its cause, one line, in the run's causes folder (mega3d.pipelines.tasks); the supervisor reads it there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, BinaryIO, TextIO

from mega3d.trainer.lifetime import end_with_parent

RUN_MARK = "MEGA3D_RUN_MARK"
SUPERVISOR = "MEGA3D_SUPERVISOR"  # the pid of `mega3d run`, for the pipeline process
CAUSES_DIR = "MEGA3D_CAUSES"  # where a failed step writes its cause (mega3d.pipelines.tasks reads this)
LOG_FILE = "run.log"
STOP_GRACE_SECONDS = 5.0  # what the run gets between SIGTERM and SIGKILL
LOG_ONLY, SHOWN = "L", "S"

EXECUTOR_TAG = "[KFP Executor "
ANSI = re.compile(r"\x1b\[[0-9;]*m")
KFP_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - (?P<message>.*)$")
TASK_STARTS = re.compile(r"^Executing task '(?P<task>[^']+)'$")
TASK_ENDS = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)$")
TASK_OUTPUTS = re.compile(r"^Task '[^']+' outputs:$")
# torchrun's own log lines (glog format), e.g. `W1203 09:17:03.123000 23915 torch/distributed/run.py:766]`.
TORCHRUN_LINE = re.compile(r"^[WIEF]\d{4} \d\d:\d\d:\d\d")
# What the launcher (`node0 | `), torchrun (`[0]:`) and torch.distributed (`[rank0]: `) put before a line.
REPLICA_PREFIX = re.compile(r"^(?P<node>node\d+ \| )?(?:\[\d+\]:)?(?:\[rank\d+\]: ?)?")
RETRY_LINE = re.compile(r"ended [A-Z]+: starting it again")


# ---- causes: one plain line for a failure --------------------------------------------------------------

# The last line of a Python traceback (`pkg.module.SomeError: message`), or what `SystemExit("error: ...")`
# prints; torchrun's and TorchX's reports of a failed child are not causes.
EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?P<type>[A-Za-z_]\w*(?:Error|Exception))(?:: (?P<message>.*))?$"
)
ERROR_LINE = re.compile(r"^error: (?P<message>.+)$")
NOT_CAUSES = ("ChildFailedError", "SignalException", "LaunchError")
ERRNO = re.compile(r"^\[Errno \d+\] (?P<why>[^:]+): '(?P<path>.*)'$")
# An OSError without a file name (a write to a full disk): the system's words alone.
ERRNO_ALONE = re.compile(r"^\[Errno \d+\] (?P<why>[^:]+)$")


def plain_cause(error: BaseException) -> str:
    """An exception as one line a user can act on: `PATH: why` for a failed file operation, the message of
    mega3d's own errors, `Type: message` for others."""
    explained = getattr(error, "cause", None)
    if isinstance(explained, str) and explained:
        return explained
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    own = type(error).__module__.startswith("mega3d") or isinstance(error, ValueError)
    return lines[0] if own else f"{type(error).__name__}: {lines[0]}"


def cause_in_log(lines: list[str]) -> str | None:
    """The last exception or `error:` line of a process's output (its prefixes removed), in plain words."""
    for line in reversed(lines):
        text = line.strip()
        prefix = REPLICA_PREFIX.match(text)
        assert prefix is not None
        text = text[prefix.end() :].strip()
        error = ERROR_LINE.match(text)
        if error is not None:
            return error["message"]
        exception = EXCEPTION_LINE.match(text)
        if exception is None or exception["type"] in NOT_CAUSES:
            continue
        message = (exception["message"] or "").strip()
        errno = ERRNO.match(message)
        if errno is not None:
            return f"{errno['path']}: {errno['why']}"
        alone = ERRNO_ALONE.match(message)
        if alone is not None:
            return alone["why"]
        if not message:
            return exception["type"]
        own = text.startswith("mega3d.") or exception["type"] in ("ValueError", "DatasetError", "SpecError")
        return message if own else f"{exception['type']}: {message}"
    return None


# ---- the pipeline process's side ----------------------------------------------------------------------


@dataclass
class _ThreadState:
    """Where one thread's output stands: kfp.local relays each step (and each ParallelFor iteration) from
    a thread of its own, and their lines interleave."""

    pending: str = ""
    dump_end: str | None = None  # in an executor dump: the line that closes it
    hidden_block: bool = False  # in a step's outputs dump or a traceback: hidden up to kfp's next line
    started: dict[str, float] = field(default_factory=dict)
    indent: int = 0  # spaces before each line: kfp.local indents a step's streamed output


class TaggedOutput:
    """The pipeline process's stdout and stderr: every complete line, colour codes removed, goes to the
    supervisor as a log line, and those worth showing once more as a shown line."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.threads: dict[int, _ThreadState] = {}
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            state = self.threads.setdefault(threading.get_ident(), _ThreadState())
            *lines, state.pending = (state.pending + text).split("\n")
            for line in lines:
                self._emit(state, " " * state.indent + ANSI.sub("", line))
        return len(text)

    @contextlib.contextmanager
    def indented(self, num_spaces: int = 4) -> Iterator[None]:
        """kfp.local's `indented_print`, for the calling thread alone.

        kfp.local's own swaps `builtins.print` for the whole process while a step streams its output, and
        runs ParallelFor iterations in threads: an iteration that ended put the plain print back under one
        still streaming, whose lines then lost the indentation that marks a step's output."""
        with self.lock:
            state = self.threads.setdefault(threading.get_ident(), _ThreadState())
            state.indent += num_spaces
        try:
            yield
        finally:
            with self.lock:
                state.indent -= num_spaces

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False

    def _emit(self, state: _ThreadState, line: str) -> None:
        self._send(LOG_ONLY, line)
        shown = self._shown(state, line)
        if shown is not None:
            self._send(SHOWN, shown)

    def _send(self, tag: str, line: str) -> None:
        try:
            self.target.write(f"{tag}{line}\n".encode(errors="replace"))
            self.target.flush()
        except (BrokenPipeError, ValueError):  # the supervisor is gone: the run is being stopped
            pass

    def _shown(self, state: _ThreadState, line: str) -> str | None:
        kfp = KFP_LINE.match(line)
        if kfp is not None:
            state.hidden_block = False
            return self._task_line(state, kfp["message"])
        if not line.startswith("    "):  # kfp.local's separators and blank lines; steps' output is indented
            state.hidden_block = False
            return None
        text = line[4:]
        if state.dump_end is not None:
            if text == state.dump_end:
                state.dump_end = None
            return None
        if EXECUTOR_TAG in text:
            if text.rstrip().endswith(":"):  # the dump's JSON follows, closed by "}" at the tag's indent
                state.dump_end = text[: len(text) - len(text.lstrip())] + "}"
            return None
        prefix = REPLICA_PREFIX.match(text)
        assert prefix is not None  # every part of the pattern is optional
        message = text[prefix.end() :]
        if "Traceback (most recent call last):" in message:
            state.hidden_block = True
        elif RETRY_LINE.search(message):
            state.hidden_block = False
        if state.hidden_block or not message.strip() or TORCHRUN_LINE.match(message):
            return None
        # The launcher's handle, torch's Python and C++ warnings (`[W1203 ...]`).
        if message.startswith(("launched ", "torch.distributed.", "[W")):
            return None
        return f"  {prefix['node'] or ''}{message}"

    def _task_line(self, state: _ThreadState, message: str) -> str | None:
        starts = TASK_STARTS.match(message)
        if starts is not None:
            state.started[starts["task"]] = time.monotonic()
            return f"{starts['task']}: started"
        ends = TASK_ENDS.match(message)
        if ends is not None:
            took = time.monotonic() - state.started.pop(ends["task"], time.monotonic())
            verdict = "done" if ends["status"] == "SUCCESS" else "failed"
            return f"{ends['task']}: {verdict} in {took:.1f}s"
        state.hidden_block = TASK_OUTPUTS.match(message) is not None
        return None


def _die_with_parent() -> None:
    """SIGTERM to this process when the supervisor dies, however it dies."""
    end_with_parent(int(os.environ[SUPERVISOR]), signal.SIGTERM)


def _stop_run_and_exit(signum: int, frame: FrameType | None) -> None:
    """Stop the steps (kfp.local's subprocesses, in this process's session); each training step stops its
    TorchX job itself (mega3d.pipelines.launcher), whose processes have sessions of their own."""
    stop_marked(os.environ[RUN_MARK], lambda pid: session_of(pid) == os.getpid())
    os._exit(128 + signum)  # no traceback, no handlers of kfp's threads


def run_local(
    spec_json: str, run_id: str, skip_if_trained: bool, cluster_json: str, pipeline_root: str
) -> None:
    """Run the pipeline with kfp.local; raises when a step fails (kfp.local stops at the first failed
    task)."""
    from kfp import local

    from mega3d.pipelines.launcher import LOCAL_SCHEDULER
    from mega3d.pipelines.pipeline import build_pipeline
    from mega3d.trainer.spec import spec_from_json

    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root, raise_on_error=True
    )
    pipeline = build_pipeline(spec_from_json(spec_json))
    pipeline(
        run_id=run_id,
        scheduler=LOCAL_SCHEDULER,
        skip_if_trained=skip_if_trained,
        cluster_json=cluster_json,
    )


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # kfp.local warns of every setting that matters only on a cluster: the run's log has them, on one line.
    print(f"{category.__name__}: {message}", file=sys.stderr)


def relay_output(target: BinaryIO) -> TaggedOutput:
    """This process's stdout, stderr, warnings and kfp.local's indentation of steps' output, tagged to
    `target`."""
    from kfp.local import logging_utils

    tagged = TaggedOutput(target)
    sys.stdout = sys.stderr = tagged
    warnings.showwarning = _log_warning
    logging_utils.indented_print = tagged.indented  # kfp.local's task_dispatcher looks it up on each task
    return tagged


def main() -> None:
    """The pipeline process: the request (JSON) on stdin, tagged lines on stdout."""
    _die_with_parent()
    signal.signal(signal.SIGTERM, _stop_run_and_exit)
    signal.signal(signal.SIGINT, _stop_run_and_exit)
    request = json.load(sys.stdin)
    relay_output(sys.stdout.buffer)
    try:
        run_local(
            request["spec_json"],
            request["run_id"],
            request["skip_if_trained"],
            request["cluster_json"],
            request["pipeline_root"],
        )
    except Exception as error:
        print(f"the pipeline failed: {ANSI.sub('', str(error))}")
        sys.exit(1)


# ---- the supervisor's side (no kfp, no torch) ---------------------------------------------------------


def marked_processes(token: str) -> list[int]:
    """Every live process whose environment carries the run's mark, but this one."""
    needle = f"{RUN_MARK}={token}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = Path(entry.path, "environ").read_bytes()  # empty for a zombie: it runs nothing
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in environment.split(b"\0"):
            found.append(int(entry.name))
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # ended meanwhile
        os.kill(pid, signum)


def session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[3])  # after the command's name: state, ppid, pgrp, session


def stop_marked(token: str, terminate: Callable[[int], bool], grace: float = STOP_GRACE_SECONDS) -> int:
    """SIGTERM to the run's processes that `terminate` picks (also those that appear meanwhile), then wait
    for every process of the run to end; SIGKILL to those left after `grace` seconds. How many there were.

    Each process gets SIGTERM once at most: a second one would cut short its own orderly stop (a step
    closing its TorchX runner, torchrun stopping its workers)."""
    seen: set[int] = set()
    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        alive = marked_processes(token)
        if not alive:
            return len(seen)
        seen.update(alive)
        late = time.monotonic() > deadline
        for pid in alive:
            if late:
                _signal(pid, signal.SIGKILL)
            elif pid not in signalled and terminate(pid):
                _signal(pid, signal.SIGTERM)
                signalled.add(pid)
        time.sleep(0.05)


@dataclass(frozen=True)
class Cause:
    step: str  # what failed: "training", "preparing the run", ...
    stage: str | None
    cause: str

    def __str__(self) -> str:
        where = f"{self.step} of stage {self.stage}" if self.stage else self.step
        return f"{where}: {self.cause}"


@dataclass(frozen=True)
class Outcome:
    code: int  # 0, the pipeline process's exit code, or 128 + the signal that stopped the run
    log: str  # the run's whole log
    signal: int | None = None
    stopped: int = 0  # processes stopped
    cause: Cause | str | None = None  # why the run failed


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def _first_cause(causes: Path, log: Path) -> Cause | str | None:
    """The cause the first failed step wrote; else the last error line of the log."""
    written = sorted(causes.glob("*.json"), key=lambda path: path.stat().st_mtime) if causes.is_dir() else []
    for path in written:
        try:
            data = json.loads(path.read_text())
            return Cause(str(data["step"]), data.get("stage"), str(data["cause"]))
        except (OSError, ValueError, KeyError):
            continue
    return cause_in_log(log.read_text(errors="replace").splitlines()) if log.exists() else None


def _lines(stream: IO[bytes]) -> Iterator[str]:
    for raw in stream:
        yield raw.decode(errors="replace").rstrip("\n")


def supervise(
    spec_json: str,
    run_id: str,
    run_dir: str,
    skip_if_trained: bool,
    cluster_json: str,
    show: Callable[[str], None],
    verbose: bool = False,
) -> Outcome:
    """Run the pipeline in a process of its own and wait for it; `show` gets what the user sees (with
    `verbose`, every line of the log). SIGINT and SIGTERM stop the whole run."""
    # kfp.local keeps its artifacts, and the run its log, on the local disk: in the run directory when that
    # is local, else in a temporary folder.
    local_dir = Path(run_dir) if "://" not in run_dir else Path(tempfile.mkdtemp(prefix=f"mega3d-{run_id}-"))
    local_dir.mkdir(parents=True, exist_ok=True)
    causes = Path(tempfile.mkdtemp(prefix=f"mega3d-{run_id}-causes-"))
    token = os.urandom(12).hex()
    request = {
        "spec_json": spec_json,
        "run_id": run_id,
        "skip_if_trained": skip_if_trained,
        "cluster_json": cluster_json,
        "pipeline_root": str(local_dir / "kfp"),
    }
    environment = {
        **os.environ,
        RUN_MARK: token,
        SUPERVISOR: str(os.getpid()),
        CAUSES_DIR: str(causes),
        "PYTHONUNBUFFERED": "1",
    }
    log_path = local_dir / LOG_FILE
    handlers = {
        signum: signal.signal(signum, _raise_stopped)
        for signum in (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
    }
    try:
        with open(log_path, "w") as log:
            process: subprocess.Popen[bytes] | None = None
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "mega3d.pipelines.local"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    env=environment,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches the supervisor only
                )
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(json.dumps(request).encode())
                process.stdin.close()
                for line in _lines(process.stdout):
                    tag, text = line[:1], line[1:]
                    if tag == LOG_ONLY:
                        log.write(text + "\n")
                        log.flush()
                    if (tag == LOG_ONLY) == verbose:
                        show(text)
                code = process.wait()
            except _Stopped as stop:
                for signum in handlers:  # stopping takes seconds: a second Ctrl-C must not cut it short
                    signal.signal(signum, signal.SIG_IGN)
                # The pipeline process stops the steps; a run stopped before it started has nothing else.
                pipeline = process.pid if process is not None else None
                stopped = stop_marked(token, lambda pid: pipeline in (pid, None), STOP_GRACE_SECONDS + 2)
                if process is not None:
                    process.wait()
                log.write(f"stopped by signal {stop.signum}: {stopped} processes\n")
                return Outcome(128 + stop.signum, str(log_path), stop.signum, stopped)
        return Outcome(code, str(log_path), cause=_first_cause(causes, log_path) if code else None)
    finally:
        for signum, previous in handlers.items():
            signal.signal(signum, previous)
        for path in causes.glob("*"):
            path.unlink()
        causes.rmdir()
        if "://" in run_dir:
            _keep_log(log_path, run_dir)


def _keep_log(log_path: Path, run_dir: str) -> None:
    """A run on object storage keeps its log beside its files too."""
    from mega3d.trainer import storage

    try:
        storage.write_bytes(storage.join(run_dir, LOG_FILE), log_path.read_bytes())
    except (OSError, ValueError) as error:
        print(f"could not copy {log_path} to {run_dir}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
