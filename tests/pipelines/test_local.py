from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest

from mega3d.pipelines.local import (
    LOG_ONLY,
    RUN_MARK,
    SHOWN,
    TaggedOutput,
    cause_in_log,
    marked_processes,
    plain_cause,
    relay_output,
    stop_marked,
)
from mega3d.trainer.data.format import DatasetError


def tagged(pieces: list[str]) -> tuple[list[str], list[str]]:
    """What the supervisor receives of `pieces` written to the pipeline process's stdout: (log, shown)."""
    target = io.BytesIO()
    writer = TaggedOutput(target)
    for piece in pieces:
        writer.write(piece)
    lines = target.getvalue().decode().splitlines()
    return [line[1:] for line in lines if line[0] == LOG_ONLY], [
        line[1:] for line in lines if line[0] == SHOWN
    ]


def test_dumps_of_steps_running_side_by_side_are_all_dropped() -> None:
    """ParallelFor steps write from their own threads, with their own indentation."""

    def step_output(indent: str, name: str) -> list[str]:
        return [
            f"    {indent}[KFP Executor 2026-01-01 INFO]: Got executor_input:\n",
            f"    {indent}{{\n",
            f'    {indent}    "inputs": {{\n',
            f'    {indent}        "stage": "{name}"\n',
            f"    {indent}    }}\n",
            f"    {indent}}}\n",
            f"    {indent}{name} trains\n",
        ]

    target = io.BytesIO()
    writer = TaggedOutput(target)
    barrier = threading.Barrier(2)

    def run(indent: str, name: str) -> None:
        for piece in step_output(indent, name):
            barrier.wait()  # the two steps' lines interleave
            writer.write(piece)

    threads = [threading.Thread(target=run, args=args) for args in (("", "a"), ("    ", "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = target.getvalue().decode().splitlines()
    assert sorted(line for line in lines if line[0] == SHOWN) == ["S      b trains", "S  a trains"]
    assert len([line for line in lines if line[0] == LOG_ONLY]) == 14  # the log keeps every line


def test_a_step_that_streams_after_another_ended_beside_it_still_shows_its_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kfp.local indents each step's streamed output, and ParallelFor iterations stream from threads:
    one ending while the other streams must not take the other's indentation away."""
    from kfp.local import logging_utils

    for name in ("stdout", "stderr"):
        monkeypatch.setattr(sys, name, getattr(sys, name))
    monkeypatch.setattr(logging_utils, "indented_print", logging_utils.indented_print)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    target = io.BytesIO()
    relay_output(target)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with logging_utils.indented_print():
            first_in.set()
            second_in.wait()
            print("a trains")
        first_out.set()

    def second() -> None:
        first_in.wait()
        with logging_utils.indented_print():
            second_in.set()
            first_out.wait()
            print("b trains")

    threads = [threading.Thread(target=step) for step in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = target.getvalue().decode().splitlines()
    assert sorted(line for line in lines if line[0] == SHOWN) == ["S  a trains", "S  b trains"]
    assert sorted(line for line in lines if line[0] == LOG_ONLY) == ["L    a trains", "L    b trains"]


def test_a_step_shows_its_start_its_progress_and_its_end_and_nothing_of_kfp() -> None:
    relayed = (
        "09:00:00.000 - INFO - Executing task \x1b[96m'finetune'\x1b[0m\n"
        "09:00:00.001 - INFO - Streamed logs:\n"
        "\n"
        "    [KFP Executor 2026-01-01 INFO]: Looking for component `x`\n"
        "    [KFP Executor 2026-01-01 INFO]: Got executor_input:\n"
        '    {\n        "inputs": {}\n    }\n'
        "    launched local_cwd://torchx/x-1\n"
        "    [0]:W1203 09:17:03.123000 23915 torch/distributed/run.py:766] *****\n"
        "    [0]:[tuned] epoch 1/1  loss 1.354\n"
        "    node1 | [0]:[tuned] epoch 1/1  loss 1.354\n"
        "    [KFP Executor 2026-01-01 INFO]: Wrote executor output file to /x.\n"
        "\n"
        "09:00:02.000 - INFO - Task \x1b[96m'finetune'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
        "09:00:02.000 - INFO - Task \x1b[96m'finetune'\x1b[0m outputs:\n"
        "    model: Model( name='model',\n"
        "                  metadata={'stage': 'tuned'} )\n"
        "--------------------------------------------------------------------------------\n"
        "09:00:02.100 - INFO - Executing task 'evaluate'\n"
        "    Traceback (most recent call last):\n"
        '      File "x.py", line 1, in <module>\n'
        "    FileNotFoundError: [Errno 2] No such file or directory: '/x'\n"
        "09:00:03.000 - ERROR - Task 'evaluate' finished with status FAILURE\n"
    )
    log, shown = tagged([relayed[:50], relayed[50:400], relayed[400:]])  # lines may arrive split
    assert shown[0] == "finetune: started"
    assert shown[1:3] == ["  [tuned] epoch 1/1  loss 1.354", "  node1 | [tuned] epoch 1/1  loss 1.354"]
    assert shown[3].startswith("finetune: done in ") and shown[4] == "evaluate: started"
    assert shown[5].startswith("evaluate: failed in ") and len(shown) == 6
    assert len(log) == len(relayed.splitlines()) and not any("\x1b" in line for line in log)


def test_the_cause_of_a_failed_training_job_is_its_last_error_not_torchruns_report() -> None:
    output = [
        "[0]:[tuned] epoch 1/3  loss 1.354",
        "[0]:[rank0]: Traceback (most recent call last):",
        '[0]:[rank0]:   File "/x/shards.py", line 3, in read',
        "[0]:[rank0]: FileNotFoundError: [Errno 2] No such file or directory: '/data/shard-00000.bin'",
        "Traceback (most recent call last):",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "  exitcode  : 1 (pid: 7)",
        "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
    ]
    assert cause_in_log(output) == "/data/shard-00000.bin: No such file or directory"
    assert (
        cause_in_log(["node0 | error: no GPU here: the stage asks for 1"])
        == "no GPU here: the stage asks for 1"
    )
    weights = "mega3d.trainer.models.weights.WeightsError: /x/bad.pt: refused: not a checkpoint"
    assert cause_in_log([f"[0]:[rank0]: {weights}"]) == "/x/bad.pt: refused: not a checkpoint"
    assert cause_in_log(["[0]:[rank0]: OSError: [Errno 28] No space left on device"]) == (
        "No space left on device"
    )
    assert cause_in_log(["KeyError: 'conv1.weight'"]) == "KeyError: 'conv1.weight'"
    assert cause_in_log(["all went well"]) is None


def test_an_exception_in_plain_words() -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/r1/tuned/checkpoint.pt")
    assert plain_cause(full) == "/runs/r1/tuned/checkpoint.pt: No space left on device"
    assert plain_cause(DatasetError("datasets.motion: no dataset index at /x")) == (
        "datasets.motion: no dataset index at /x"
    )
    assert plain_cause(KeyError("conv1.weight")) == "KeyError: 'conv1.weight'"
    assert plain_cause(RuntimeError()) == "RuntimeError"


def test_every_process_of_a_run_is_stopped_whatever_its_session_and_signals() -> None:
    """A process in a session of its own that ignores SIGTERM is killed after the grace period."""
    token = os.urandom(6).hex()
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", stubborn], env={**os.environ, RUN_MARK: token})
    deadline = time.monotonic() + 20
    while len(marked_processes(token)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(marked_processes(token)) == 2
    started = time.monotonic()
    reaper = threading.Thread(target=parent.wait)  # the test is its parent: it must reap it
    reaper.start()
    assert stop_marked(token, lambda pid: True, grace=1.0) == 2
    assert time.monotonic() - started < 5 and marked_processes(token) == []
    reaper.join()
    assert parent.returncode == -signal.SIGKILL
