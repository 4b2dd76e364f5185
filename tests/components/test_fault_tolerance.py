"""A node dies mid-training: the job restarts its workers and resumes from the latest checkpoint.

Two "nodes" on TorchX local_cwd (one torchrun each, real DDP over gloo). The training process of node 1 is
killed (SIGKILL, as a lost machine would leave it) after an epoch checkpoint; torchrun restarts the worker
group on both nodes, training resumes from that checkpoint, and the stage ends as an uninterrupted run with
the same seed does.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from torchx.specs import AppDef

from mega3d.components.train import trainer
from mega3d.pipelines.launcher import LaunchError, free_port, launch_local
from mega3d.trainer.data.format import index_uri
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.spec import SyntheticSpec, parse_spec

STAGE = {
    "epochs": 5,
    "batch_size": 4,
    "num_workers": 0,
    "seed": 5,
    "clip": {"frames": 4, "size": 16, "flip": False},
    "optimizer": {"lr": 0.05},
    "resources": {"nnodes": 2, "nproc_per_node": 1, "cpu": 1},
    "max_retries": 1,
}


def stage_app(spec: Path, dataset: str, out: Path, max_retries: int, nnodes: int | str) -> AppDef:
    return trainer(
        "train",
        "--spec",
        str(spec),
        "--stage",
        "pretrain",
        "--data-index",
        index_uri(dataset),
        "--out",
        str(out),
        name="ft-test",
        nnodes=nnodes,
        nproc_per_node=1,
        cpu=1,
        max_retries=max_retries,
        rdzv_port=free_port(),
    )


def train_stage(
    spec: Path,
    dataset: str,
    out: Path,
    capsys: pytest.CaptureFixture[str],
    max_retries: int = 1,
    nnodes: int | str = 2,
) -> None:
    """Train the stage; a failed launch fails the test with the end of the job's log, not all of it."""
    try:
        app = stage_app(spec, dataset, out, max_retries, nnodes)
        launch_local(app, {"log_dir": str(out / "logs")}, stage_dir=str(out))
    except LaunchError as error:
        tail = "\n".join(capsys.readouterr().out.splitlines()[-60:])
        pytest.fail(f"{error}\nthe end of its log:\n{tail}", pytrace=False)


def stage_of_two_nodes(tmp_path: Path, stage: dict[str, Any]) -> tuple[Path, str]:
    """A small dataset and a spec whose pretraining is `stage`: the spec file and the dataset's URI."""
    dataset = str(tmp_path / "data")
    synthesize(dataset, SyntheticSpec(classes=3, videos_per_class=8, frames=12, size=24, seed=4))
    spec = parse_spec(
        {
            "name": "faults",
            "storage": str(tmp_path),
            "datasets": {"motion": {"uri": dataset}},
            "model": {"name": "r3d-10", "widen_factor": 0.125},
            "pretrain": {"datasets": ["motion"], **stage},
            "finetune": [{"name": "tuned", "dataset": "motion"}],
        }
    )
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json())
    return spec_file, dataset


def training_process_of_rank(rank: int, out: Path) -> int | None:
    """The pid of `python -m mega3d.trainer train ... --out OUT` running as `rank`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if (
            b"mega3d.trainer" in command
            and str(out).encode() in command
            and f"RANK={rank}".encode() in environment
        ):
            return int(entry.name)
    return None


def latest_epoch(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_a_killed_node_costs_at_most_one_checkpoint_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file, dataset = stage_of_two_nodes(tmp_path, STAGE)
    train_stage(spec_file, dataset, tmp_path / "straight", capsys)
    capsys.readouterr()

    interrupted = tmp_path / "interrupted"
    killed_after: list[int] = []

    def kill_node_1_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if latest_epoch(interrupted) >= 2:
                pid = training_process_of_rank(1, interrupted)
                if pid is not None:
                    killed_after.append(latest_epoch(interrupted))
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_node_1_after_a_checkpoint, daemon=True)
    killer.start()
    # The launcher handles signals, so the main thread runs it and the killer runs beside it.
    train_stage(spec_file, dataset, interrupted, capsys)
    killer.join(timeout=1)
    assert killed_after and 2 <= killed_after[0] < STAGE["epochs"], "node 1 was not killed during training"
    log = capsys.readouterr().out
    resumed = [line for line in log.splitlines() if "resuming after epoch" in line]
    assert len(resumed) == 1, log[-3000:]
    resumed_after = int(resumed[0].split("resuming after epoch ")[1].split()[0])
    assert resumed_after >= killed_after[0]  # nothing before the last checkpoint was lost

    def metrics(out: Path) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((out / "metrics.json").read_text())
        return result

    straight, recovered = metrics(tmp_path / "straight"), metrics(interrupted)
    assert [h["epoch"] for h in recovered["history"]] == list(range(1, STAGE["epochs"] + 1))
    assert recovered["world_size"] == 2
    for key in ("train_loss", "val_loss", "lr"):
        assert [h[key] for h in recovered["history"]] == pytest.approx(
            [h[key] for h in straight["history"]], rel=1e-4
        ), key
    for key in ("clip_accuracy", "video_top1", "video_top5"):
        assert recovered[key] == pytest.approx(straight[key], abs=1e-6), key


def sigterm_both_nodes_after_two_epochs(out: Path) -> tuple[threading.Thread, list[int]]:
    """A thread that sends SIGTERM to both torchrun agents of the job writing to `out` once it has an
    epoch checkpoint of epoch 2 (mid-training), and the pids it signalled."""
    signalled: list[int] = []

    def preempt() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not signalled:
            agents = torchrun_agents(out)
            if latest_epoch(out) >= 2 and len(agents) == 2:
                for pid in agents:
                    os.kill(pid, signal.SIGTERM)
                signalled.extend(agents)
            time.sleep(0.05)

    preempter = threading.Thread(target=preempt, daemon=True)
    preempter.start()
    return preempter, signalled


def torchrun_agents(out: Path) -> list[int]:
    """The pids of the torchrun processes (one per "node") of the job writing to `out`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(part.endswith(b"torchrun") for part in command[:2]) and str(out).encode() in command:
                found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_preempted_job_saves_its_step_and_goes_on_exactly_where_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM to both nodes (torchrun, as the kubelet signals a pod's main process) in the middle of
    training: every rank finishes its step, a step checkpoint is written and the job ends; the launcher
    starts it again though the stage has no retries (a preemption is not a failure), and it continues at
    the next batch of that epoch, ending as the uninterrupted job does: the same losses and the same final
    weights."""
    import torch

    spec_file, dataset = stage_of_two_nodes(tmp_path, {**STAGE, "epochs": 30, "batch_size": 2})
    train_stage(spec_file, dataset, tmp_path / "straight", capsys)
    capsys.readouterr()

    interrupted = tmp_path / "interrupted"
    preempter, signalled = sigterm_both_nodes_after_two_epochs(interrupted)
    train_stage(spec_file, dataset, interrupted, capsys, max_retries=0)
    preempter.join(timeout=1)
    log = capsys.readouterr().out
    assert signalled, "the job was not signalled while it trained"
    (stopped,) = [
        line for line in log.splitlines() if "preempted: stage pretrain: stopped on SIGTERM" in line
    ]
    epoch, batch = (
        int(word) for word in stopped.split("in epoch ")[1].split(" of ")[0].split(" after batch ")
    )
    assert f"resuming after epoch {epoch - 1} and {batch} batches of epoch {epoch}" in log
    assert "stopped on SIGTERM to rank 0 (" in stopped and "rank 1 (" in stopped  # both nodes were told
    assert "was preempted (1 so far): starting it again" in log and "retries left" not in log

    straight, recovered = (
        json.loads((out / "metrics.json").read_text()) for out in (tmp_path / "straight", interrupted)
    )
    assert [h["epoch"] for h in recovered["history"]] == list(range(1, 31))
    assert (straight["preemptions"], recovered["preemptions"]) == (0, 1) and recovered[
        "preempted_seconds"
    ] > 0
    for key in ("train_loss", "train_accuracy", "val_loss", "lr"):
        assert [h[key] for h in recovered["history"]] == [h[key] for h in straight["history"]], key
    weights = [
        torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
        for out in (tmp_path / "straight", interrupted)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    # The step checkpoint is gone once a later checkpoint supersedes it.
    assert not [p.name for p in (interrupted / "checkpoints").iterdir() if "-batch-" in p.name]


@pytest.mark.slow
def test_an_elastic_stage_preempted_on_two_nodes_goes_on_on_one_with_the_same_updates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nnodes: "1:2"` with a global batch of 4: two nodes take batches of 2; SIGTERM to both mid-training,
    and only one node comes back (the launcher here is told not to start the job again, and the test starts
    it on one node). It takes up the step checkpoint at the next global batch, in batches of 2 accumulated
    twice, and trains on as the uninterrupted 2-node stage did: the same updates of the same clips, so the
    same learning rates, training losses and weights (to rounding: two gradients add up in another order).
    BatchNorm's running statistics, which DDP takes from rank 0 alone, are not compared."""
    import torch

    from mega3d.pipelines import launcher

    stage = {key: value for key, value in STAGE.items() if key != "batch_size"}
    stage.update(
        epochs=5,
        global_batch_size=4,
        schedule={"kind": "cosine"},
        resources={**STAGE["resources"], "nnodes": "1:2"},
    )
    spec_file, dataset = stage_of_two_nodes(tmp_path, stage)
    train_stage(spec_file, dataset, tmp_path / "straight", capsys, nnodes="1:2")
    assert "global batch 4 = 2 processes x 2 clips x 1 accumulated" in capsys.readouterr().out

    interrupted = tmp_path / "interrupted"
    preempter, signalled = sigterm_both_nodes_after_two_epochs(interrupted)
    monkeypatch.setattr(launcher, "MAX_PREEMPTIONS", 0)
    with pytest.raises(LaunchError):  # the job ends preempted, and is not started again here
        launch_local(
            stage_app(spec_file, dataset, interrupted, 0, "1:2"),
            {"log_dir": str(interrupted / "logs")},
            stage_dir=str(interrupted),
        )
    preempter.join(timeout=1)
    assert signalled, "the job was not signalled while it trained"
    (stopped,) = [line for line in capsys.readouterr().out.splitlines() if "stopped on SIGTERM" in line]
    epoch, batch = (
        int(word) for word in stopped.split("in epoch ")[1].split(" of ")[0].split(" after batch ")
    )

    train_stage(spec_file, dataset, interrupted, capsys, max_retries=0, nnodes=1)
    log = capsys.readouterr().out
    assert "global batch 4 = 1 processes x 2 clips x 2 accumulated" in log
    assert f"resuming after epoch {epoch - 1} and {batch} batches of epoch {epoch}" in log
    straight, recovered = (
        json.loads((out / "metrics.json").read_text()) for out in (tmp_path / "straight", interrupted)
    )
    assert (straight["world_size"], recovered["world_size"]) == (2, 1)
    assert [h["epoch"] for h in recovered["history"]] == list(range(1, 6))
    assert [h["lr"] for h in recovered["history"]] == [h["lr"] for h in straight["history"]]
    assert [h["train_loss"] for h in recovered["history"]] == pytest.approx(
        [h["train_loss"] for h in straight["history"]], rel=1e-4
    )
    weights = [
        torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
        for out in (tmp_path / "straight", interrupted)
    ]
    trained = [name for name in weights[0] if not name.endswith(("running_mean", "running_var", "tracked"))]
    for name in trained:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-3, atol=1e-5)
