"""The trainer entry point as torchrun runs it (here: one process, a world of one)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from mega3d.trainer.checkpoint import (
    CheckpointError,
    CheckpointHeader,
    TrainingState,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from mega3d.trainer.data.format import ClipReader, DatasetError, index_uri, load_index
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.data.writer import ShardWriter, SingleWriterPlan, finish, jpeg_frames, start
from mega3d.trainer.models import build_model
from mega3d.trainer.records import StageJob
from mega3d.trainer.spec import (
    KINETICS_MEAN,
    KINETICS_STD,
    EvaluationSpec,
    FinetuneSpec,
    ModelSpec,
    PretrainSpec,
    SyntheticSpec,
    parse_spec,
)
from mega3d.trainer.train import DIVERGED_STEPS, Trainer, TrainingOrder, duration

TINY_STAGE = {
    "epochs": 2,
    "batch_size": 4,
    "num_workers": 0,
    "clip": {"frames": 4, "size": 16},
    "resources": {"cpu": 1},
}


def write_spec(tmp_path: Path, dataset: str, **finetune: Any) -> str:
    spec = parse_spec(
        {
            "name": "tiny",
            "storage": str(tmp_path),
            "datasets": {"tiny": {"uri": dataset}},
            "model": {"name": "r3d-10", "widen_factor": 0.125},
            "pretrain": {"datasets": ["tiny"], **TINY_STAGE},
            "finetune": [{"name": "tuned", "dataset": "tiny", **TINY_STAGE, **finetune}],
            "evaluation": {"batch_size": 8},
        }
    )
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    return str(path)


def trainer(
    command: str,
    spec: str,
    stage: str,
    dataset: str,
    out: Path,
    init: Path | None = None,
    returncode: int = 0,
) -> subprocess.CompletedProcess[str]:
    args = [
        command,
        "--spec",
        spec,
        "--stage",
        stage,
        "--data-index",
        f"{dataset}/index.npz",
        "--out",
        str(out),
    ]
    if init is not None:
        args += ["--init", str(init)]
    result = subprocess.run(
        [sys.executable, "-m", "mega3d.trainer", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def world_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torchrun environment of a single process, for a Trainer inside the test process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(key, value)


TINY_MODEL = ModelSpec(name="r3d-10", widen_factor=0.125)
# A stage's spec fields for a tiny run in this process; the tests' own settings are added to these.
TINY_STAGE_SPEC: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 4,
    "num_workers": 0,
    "clip": {"frames": 4, "size": 16},
}


def stage_job(
    stage: str,
    spec: PretrainSpec | FinetuneSpec,
    dataset: str,
    out: Path,
    model: ModelSpec = TINY_MODEL,
    init: Path | None = None,
    new_head: bool = False,
) -> StageJob:
    return StageJob(
        stage=stage,
        spec=spec,
        model=model,
        evaluation=EvaluationSpec(),
        experiment="tiny",
        data_index=index_uri(dataset),
        out_dir=str(out),
        init_checkpoint=None if init is None else str(init),
        new_head=new_head,
    )


def tiny_job(dataset: str, out: Path, stage: str = "pretrain", **spec: Any) -> StageJob:
    """A pretraining stage of a tiny R3D-10 on 4-frame 16-pixel clips, trained in this process; `spec`
    holds fields of its PretrainSpec."""
    return stage_job(stage, PretrainSpec(datasets=["tiny"], **{**TINY_STAGE_SPEC, **spec}), dataset, out)


def with_spec(job: StageJob, **spec: Any) -> StageJob:
    """The job with other values of stage spec fields."""
    return job.model_copy(update={"spec": job.spec.model_copy(update=spec)})


def set_up(job: StageJob) -> Trainer:
    trainer = Trainer(job)
    try:
        trainer.setup()
    except BaseException:
        trainer.close()
        raise
    return trainer


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: str) -> tuple[Path, str]:
    tmp_path = tmp_path_factory.mktemp("pretrain")
    spec = write_spec(tmp_path, tiny_dataset)
    result = trainer("train", spec, "pretrain", tiny_dataset, tmp_path / "pretrain")
    (tmp_path / "train.log").write_text(result.stdout)
    return tmp_path, spec


def test_training_writes_a_reference_layout_checkpoint_and_metrics(pretrained: tuple[Path, str]) -> None:
    tmp_path, _ = pretrained
    state = load_checkpoint(str(tmp_path / "pretrain" / "checkpoint.pt"))
    assert {"epoch", "arch", "state_dict", "optimizer", "scheduler"} <= set(state)
    assert (state["epoch"], state["arch"]) == (2, "r3d-10")
    # what `mega3d predict` cuts windows to and normalises them with
    assert state["clip"] == {"frames": 4, "size": 16, "mean": list(KINETICS_MEAN), "std": list(KINETICS_STD)}
    assert "layer1.0.conv1.weight" in state["state_dict"]

    metrics = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
    for key in ("clip_accuracy", "video_top1", "video_top5"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["world_size"] == 1 and [r["rank"] for r in metrics["ranks"]] == [0]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(0 <= h["data_wait"] <= 1 and h["seconds"] > 0 for h in metrics["history"])
    epoch_lines = [line for line in (tmp_path / "train.log").read_text().splitlines() if "epoch 2/2" in line]
    assert len(epoch_lines) == 1 and "data wait" in epoch_lines[0] and epoch_lines[0].endswith("ETA 0s")
    assert metrics["n_videos"] == 6 and metrics["n_clips"] == 6 * 3  # 10 frames: windows at 0, 4, 8
    assert 0.0 <= metrics["mean_class_accuracy"] <= 1.0 and len(metrics["per_class_accuracy"]) == 3
    results = json.loads((tmp_path / "pretrain" / "results.json").read_text())["results"]
    validation = load_index(index_uri(str(Path(metrics["job"]["data_index"]).parent))).videos("validation")
    assert sorted(results) == sorted(video.id for video in validation)
    for entries in results.values():  # the reference's layout: top classes, best first
        assert len(entries) == 3 and {e["label"] for e in entries} == set(metrics["classes"])
        assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)


def test_a_restarted_job_resumes_after_its_last_epoch(
    pretrained: tuple[Path, str], tiny_dataset: str
) -> None:
    tmp_path, spec = pretrained
    longer = json.loads(Path(spec).read_text())
    longer["pretrain"]["epochs"] = 3
    longer_spec = tmp_path / "longer.json"
    longer_spec.write_text(json.dumps(longer))
    result = trainer("train", str(longer_spec), "pretrain", tiny_dataset, tmp_path / "pretrain")
    assert "resuming after epoch 2" in result.stdout
    assert "epoch 1/3" not in result.stdout and "epoch 3/3" in result.stdout
    metrics = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_finetuning_freezes_modules_before_train_from(
    pretrained: tuple[Path, str], tiny_dataset: str
) -> None:
    tmp_path, _ = pretrained
    (tmp_path / "ft").mkdir()
    spec = write_spec(tmp_path / "ft", tiny_dataset, train_from="layer3")
    init = tmp_path / "pretrain" / "checkpoint.pt"
    result = trainer("train", spec, "tuned", tiny_dataset, tmp_path / "ft" / "out", init)
    assert "parameters trained" in result.stdout
    before = load_checkpoint(str(init))["state_dict"]
    after = load_checkpoint(str(tmp_path / "ft" / "out" / "checkpoint.pt"))["state_dict"]
    frozen = [k for k in before if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]
    trained = [k for k in before if k.split(".")[0] in ("layer3", "layer4") and k.endswith("weight")]
    assert any(k.endswith("running_mean") for k in frozen)
    for key in frozen:  # weights and BatchNorm statistics alike: bit-identical
        assert torch.equal(before[key], after[key]), key
    assert all(not torch.equal(before[k], after[k]) for k in trained)


def test_evaluate_command_scores_a_checkpoint(pretrained: tuple[Path, str], tiny_dataset: str) -> None:
    tmp_path, spec = pretrained
    out = tmp_path / "evaluation"
    trainer("evaluate", spec, "pretrain", tiny_dataset, out, tmp_path / "pretrain" / "checkpoint.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "validation" and metrics["history"] == []
    assert metrics["checkpoint"].endswith("pretrain/checkpoint.pt")
    assert not (out / "checkpoint.pt").exists()


def test_resuming_restores_weights_optimizer_and_schedule(
    pretrained: tuple[Path, str], tiny_dataset: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path, _ = pretrained
    out = tmp_path / "pretrain"
    saved = load_checkpoint(str(out / "checkpoint.pt"))
    world_of_one(monkeypatch)
    job = tiny_job(tiny_dataset, out, epochs=saved["epoch"] + 1)
    trainer = Trainer(job)
    try:
        trainer.setup()
        assert trainer.start_epoch == saved["epoch"] + 1
        for key, value in trainer.model.state_dict().items():
            assert torch.equal(value, saved["state_dict"][key]), key
        momentum = trainer.optimizer.state_dict()["state"]
        assert momentum and all(
            torch.equal(momentum[i]["momentum_buffer"], saved["optimizer"]["state"][i]["momentum_buffer"])
            for i in momentum
        )
        assert trainer.schedule.state_dict() == saved["scheduler"]
        assert [h.epoch for h in trainer.state.history] == list(range(1, saved["epoch"] + 1))
    finally:
        trainer.close()


def test_channels_last_trains_end_to_end(pretrained: tuple[Path, str], tiny_dataset: str) -> None:
    tmp_path, _ = pretrained
    (tmp_path / "channels_last").mkdir()
    spec = write_spec(tmp_path / "channels_last", tiny_dataset, epochs=1, channels_last=True)
    out = tmp_path / "channels_last" / "out"
    trainer("train", spec, "tuned", tiny_dataset, out, tmp_path / "pretrain" / "checkpoint.pt")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["job"]["spec"]["channels_last"] is True
    assert len(metrics["history"]) == 1 and metrics["history"][0]["train_loss"] > 0
    trained = load_checkpoint(str(out / "checkpoint.pt"))["state_dict"]["conv1.weight"]
    initial = load_checkpoint(str(tmp_path / "pretrain" / "checkpoint.pt"))["state_dict"]["conv1.weight"]
    assert trained.dtype == torch.float32 and not torch.equal(trained, initial)


def finetune_job(
    tmp_path: Path,
    dataset: str,
    init: Path,
    model: ModelSpec = TINY_MODEL,
    new_head: bool = True,
    **spec: Any,
) -> StageJob:
    """Fine-tuning the tiny model from `init`; `spec` holds fields of its FinetuneSpec."""
    finetune = FinetuneSpec(name="tuned", dataset="tiny", **{**TINY_STAGE_SPEC, **spec})
    return stage_job("tuned", finetune, dataset, tmp_path, model, init, new_head)


def test_the_head_is_kept_only_for_the_same_classes(
    pretrained: tuple[Path, str], tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = pretrained[0] / "pretrain" / "checkpoint.pt"
    trained_head = load_checkpoint(str(init))["state_dict"]["fc.weight"]
    other = str(tmp_path / "other")  # three classes too, but other motions
    synthesize(other, SyntheticSpec(classes=3, videos_per_class=4, frames=10, size=24, rotation=60, seed=2))
    for dataset, kept in ((tiny_dataset, True), (other, False)):
        world_of_one(monkeypatch)
        trainer = set_up(finetune_job(tmp_path / "out", dataset, init))
        try:
            assert torch.equal(trainer.model.fc.weight, trained_head) is kept, dataset
            assert torch.equal(
                trainer.model.conv1.weight, load_checkpoint(str(init))["state_dict"]["conv1.weight"]
            )
        finally:
            trainer.close()


def test_evaluating_on_other_classes_or_another_architecture_is_refused(
    pretrained: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = pretrained[0] / "pretrain" / "checkpoint.pt"
    other = str(tmp_path / "other")
    synthesize(other, SyntheticSpec(classes=3, videos_per_class=4, frames=10, size=24, rotation=60, seed=2))
    world_of_one(monkeypatch)
    with pytest.raises(ValueError, match="was trained on other classes"):
        set_up(finetune_job(tmp_path / "out", other, init, new_head=False))
    world_of_one(monkeypatch)
    with pytest.raises(ValueError, match="holds a r3d-10 model; the spec's model is r3d-18"):
        set_up(finetune_job(tmp_path / "out", other, init, ModelSpec(name="r3d-18", widen_factor=0.125)))


def test_channels_last_and_bf16_reach_the_model_and_the_inputs(
    pretrained: tuple[Path, str],
    tiny_dataset: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bf16 autocast runs on GPUs only: a bf16 job where torch sees no GPU trains in fp32 and says so."""
    init = pretrained[0] / "pretrain" / "checkpoint.pt"
    world_of_one(monkeypatch)
    trainer = set_up(finetune_job(tmp_path / "out", tiny_dataset, init, channels_last=True, precision="bf16"))
    on_gpu = torch.cuda.is_available()
    try:
        assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
        clips = trainer.model_input(torch.randint(0, 256, (2, 4, 16, 16, 3), dtype=torch.uint8))
        assert clips.is_contiguous(memory_format=torch.channels_last_3d) and not clips.is_contiguous()
        with trainer.autocast():
            assert trainer.model(clips).dtype == (torch.bfloat16 if on_gpu else torch.float32)
        assert ("training in fp32 instead of bf16" in capsys.readouterr().out) is not on_gpu
    finally:
        trainer.close()


def test_unreadable_videos_are_skipped_counted_and_limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = str(tmp_path / "data")
    synthesize(dataset, SyntheticSpec(classes=3, videos_per_class=4, frames=10, size=24, seed=5))
    index = load_index(index_uri(dataset))
    for row in (int(index.rows("training")[0]), int(index.rows("validation")[0])):  # zero their bytes
        video = index.video(row)
        shard = Path(index.shards[video.shard])
        data = bytearray(shard.read_bytes())
        data[video.offset : video.offset + video.length] = bytes(video.length)
        shard.write_bytes(bytes(data))

    def run(limit: float) -> Trainer:
        world_of_one(monkeypatch)  # a fresh rendezvous port: a second process group on the first one's hangs
        job = tiny_job(dataset, tmp_path / f"out-{limit}", batch_size=9, max_unreadable=limit)  # one batch
        trainer = Trainer(job)
        try:
            trainer.setup()
            trainer.train()
            trainer.evaluation = trainer.evaluate("validation")  # type: ignore[attr-defined]
        finally:
            trainer.close()
        return trainer

    tolerant = run(0.5)
    # One training video per epoch, and the middle window of one validation video; then its 3 windows.
    assert tolerant.state.history[0].unreadable == 2
    evaluation = tolerant.evaluation  # type: ignore[attr-defined]
    assert evaluation["unreadable"] == 5 and evaluation["n_videos"] == 2  # the unreadable one is left out
    # Past the limit the stage stops (checked on a live trainer: a process group torn down while training
    # unwinds from an exception can hang in gloo).
    world_of_one(monkeypatch)
    strict_job = with_spec(tolerant.job, max_unreadable=0.0).model_copy(
        update={"out_dir": str(tmp_path / "strict")}
    )
    strict = set_up(strict_job)
    try:
        with pytest.raises(
            DatasetError, match=r"1 of 10 clips in training epoch 1 could not be decoded, more"
        ):
            strict.count_unreadable(torch.ones(1, dtype=torch.float64), 10, "training epoch 1")
    finally:
        strict.close()


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (4.4, 185, 7620)] == ["4s", "3m05s", "2h07m"]


def test_accumulated_steps_update_like_one_big_batch(
    tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two half batches with accumulate=2 move the weights as one full batch does (a model without
    BatchNorm, whose statistics would differ between the two)."""
    torch.manual_seed(0)
    clips, labels = torch.randn(8, 3, 4, 8, 8), torch.randint(0, 3, (8,))
    weights = []
    for accumulate in (1, 2):
        world_of_one(monkeypatch)
        trainer = set_up(tiny_job(tiny_dataset, tmp_path, stage="s", accumulate=accumulate))
        try:
            torch.manual_seed(1)
            trainer.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 8 * 8, 3))
            trainer.ddp = trainer.step_model = DistributedDataParallel(trainer.model)
            trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5, momentum=0.9)
            if accumulate == 1:
                trainer.train_step(clips, labels)
            else:
                trainer.train_step(clips[:4], labels[:4], accumulate=2, update=False)
                assert all(p.grad is not None for p in trainer.model.parameters())  # kept for the next step
                trainer.train_step(clips[4:], labels[4:], accumulate=2, update=True)
            weights.append([p.detach().clone() for p in trainer.model.parameters()])
        finally:
            trainer.close()
    for full, accumulated in zip(*weights, strict=True):
        torch.testing.assert_close(accumulated, full)


def run_to(job: StageJob, monkeypatch: pytest.MonkeyPatch) -> Trainer:
    world_of_one(monkeypatch)
    trainer = set_up(job)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


def test_a_resumed_stage_continues_as_if_it_had_not_stopped(
    tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four epochs straight, against two epochs, a stop, and a restart of the same job: the same learning
    rates, steps, losses and weights (the random state of clip sampling and augmentation is restored)."""
    recipe: dict[str, Any] = {
        "seed": 3,
        "schedule": {"kind": "multistep", "milestones": [3]},
        "optimizer": {"lr": 0.05},
        "epochs": 4,
    }
    straight = run_to(tiny_job(tiny_dataset, tmp_path / "straight", **recipe), monkeypatch)
    stopped = tiny_job(tiny_dataset, tmp_path / "stopped", **recipe, checkpoint_every=2)
    run_to(stopped, monkeypatch)
    # The stopped run is the same job: cut its checkpoints back to epoch 2, as if it had died in epoch 3.
    checkpoints = tmp_path / "stopped" / "checkpoints"
    (checkpoints / "epoch-00004.pt").unlink()
    pointer = json.loads((checkpoints / "latest.json").read_text())
    assert pointer["file"] == "epoch-00004.pt"
    two = (checkpoints / "epoch-00002.pt").read_bytes()
    (checkpoints / "latest.json").write_text(
        json.dumps({"epoch": 2, "file": "epoch-00002.pt", "sha256": hashlib.sha256(two).hexdigest()})
    )
    resumed = run_to(stopped, monkeypatch)
    assert resumed.start_epoch == 3 and resumed.state.step == straight.state.step
    for key in ("lr", "train_loss", "val_loss"):
        resumed_values = [getattr(h, key) for h in resumed.state.history]
        assert resumed_values == pytest.approx([getattr(h, key) for h in straight.state.history]), key
    assert [h.lr for h in straight.state.history] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)


def test_epoch_checkpoints_are_verified_kept_few_and_found_through_their_pointer(
    tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tiny_job(tiny_dataset, tmp_path, epochs=3, keep_checkpoints=2)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir(parents=True)
    # An earlier attempt was killed while it wrote epoch 3 (which this one writes again).
    (checkpoints / "epoch-00003.pt.partial-0badf00d").write_bytes(b"what a killed writer left")
    run_to(job, monkeypatch)
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "epoch-00002.pt",
        "epoch-00003.pt",
        "latest.json",
    ]
    assert load_latest(str(tmp_path))["epoch"] == 3  # type: ignore[index]
    # A file written after the pointer last moved (a stop mid-write) is not looked at.
    (checkpoints / "epoch-00004.pt").write_bytes(b"half a checkp")
    assert load_latest(str(tmp_path))["epoch"] == 3  # type: ignore[index]
    # A file that no longer matches its pointer is refused, not trained from.
    data = bytearray((checkpoints / "epoch-00003.pt").read_bytes())
    data[-10] ^= 0xFF
    (checkpoints / "epoch-00003.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"epoch-00003\.pt: its bytes do not match"):
        load_latest(str(tmp_path))


def test_multi_label_datasets_train_with_sigmoids_and_report_map(
    tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny dataset's videos again, each with its direction plus, for every other video, a second tag."""
    source = load_index(index_uri(tiny_dataset))
    reader = ClipReader(source)
    uri = str(tmp_path / "tags")
    start(uri, SingleWriterPlan(classes=[*source.classes, "tagged"]))
    writer = ShardWriter(uri, n_classes=4)
    for row, video in enumerate(source.videos()):
        labels = [video.label, 3] if row % 2 else [video.label]
        frames = jpeg_frames(reader.frames(row, 0, video.frames))
        writer.add(row, video.id, labels, video.split, frames, video.height, video.width, video.fps)
    writer.flush()
    finish(uri, [*source.classes, "tagged"], multi_label=True)
    job = tiny_job(uri, tmp_path / "out", stage="tags", epochs=2)
    trained = run_to(job, monkeypatch)
    assert isinstance(trained.loss_fn, torch.nn.BCEWithLogitsLoss)
    assert all(h.train_loss > 0 and 0 <= h.train_accuracy <= 1 for h in trained.state.history)
    world_of_one(monkeypatch)
    evaluator = set_up(job.model_copy(update={"init_checkpoint": str(tmp_path / "out" / "checkpoint.pt")}))
    try:
        metrics = evaluator.evaluate("validation")
    finally:
        evaluator.close()
    assert 0 < metrics["mAP"] <= 1 and set(metrics["per_class_ap"]) <= {*source.classes, "tagged"}
    assert metrics["n_videos"] == len(source.rows("validation"))
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert len(results) == metrics["n_videos"] and all(len(entries) == 4 for entries in results.values())


@pytest.mark.slow
def test_a_compiled_training_step_trains_and_saves_plain_weights(
    tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world_of_one(monkeypatch)
    trained = set_up(tiny_job(tiny_dataset, tmp_path, stage="compiled", compile=True))
    try:
        assert type(trained.step_model).__name__ == "OptimizedModule"
        trained.train()
    finally:
        trained.close()
    assert trained.state.history[0].train_loss > 0
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))["state_dict"]
    assert "conv1.weight" in state and not any("_orig_mod" in key for key in state)


# A stage whose loss stops being a number fails at once, with one line, and leaves no checkpoint behind.
# (processes, clips per step and process, the line); 12 training videos.
DIVERGED = {
    f"{DIVERGED_STEPS} steps in a row": (
        1,
        2,  # 6 steps an epoch
        f"error: stage tuned: training diverged: the training loss was not finite for {DIVERGED_STEPS} "
        f"steps in a row, up to epoch 1 step {DIVERGED_STEPS} (last: nan); lower optimizer.lr (now 0.003), "
        "or check the checkpoint it starts from",
    ),
    "epochs shorter than that": (
        1,
        8,  # one step an epoch: the validation loss tells
        "error: stage tuned: training diverged: the validation loss is nan after epoch 1 (step 1); lower "
        "optimizer.lr (now 0.003), or check the checkpoint it starts from",
    ),
    "two processes stop together, one says why": (
        2,
        2,  # 3 steps an epoch on each process
        f"error: stage tuned: training diverged: the training loss was not finite for {DIVERGED_STEPS} "
        f"steps in a row, up to epoch 1 step {DIVERGED_STEPS} (last: nan); lower optimizer.lr (now 0.003), "
        "or check the checkpoint it starts from",
    ),
}


@pytest.mark.parametrize("case", sorted(DIVERGED))
def test_a_diverged_stage_fails_with_one_line_and_saves_nothing(
    case: str, tmp_path: Path, tiny_dataset: str
) -> None:
    processes, batch_size, expected = DIVERGED[case]
    model = build_model("r3d-10", 3, widen_factor=0.125)
    with torch.no_grad():  # weights of a diverged run: every loss from them is NaN
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    init = tmp_path / "diverged.pt"
    header = CheckpointHeader(arch="r3d-10", model_options={"widen_factor": 0.125}, n_classes=3)
    save_checkpoint(str(init), header, {"state_dict": model.state_dict()})
    spec = write_spec(tmp_path, tiny_dataset, batch_size=batch_size, epochs=3)
    out = tmp_path / "out"
    if processes == 1:
        stderr = trainer("train", spec, "tuned", tiny_dataset, out, init, returncode=1).stderr
    else:
        torchrun = [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            f"--nproc-per-node={processes}",
        ]
        args = [
            "--spec",
            spec,
            "--stage",
            "tuned",
            "--data-index",
            index_uri(tiny_dataset),
            "--out",
            str(out),
        ]
        result = subprocess.run(
            [*torchrun, "-m", "mega3d.trainer", "train", *args, "--init", str(init)],
            capture_output=True,
            text=True,
            timeout=300,
            env={"OMP_NUM_THREADS": "1", "PATH": ""},
        )
        assert result.returncode != 0
        stderr = result.stderr
    ours = stderr.partition(expected)[0] + expected if processes > 1 else stderr  # torchrun's report after
    assert ours.strip().splitlines() == [expected], stderr[-3000:]
    assert not out.exists() or list(out.iterdir()) == []


def updates(processes: int, accumulate: int, skip: int = 0) -> list[list[tuple[int, int]]]:
    """The clips (video, seed) of each update of epoch 4 over 43 videos in batches of 2, in the order the
    batches are numbered: on `processes` ranks, `accumulate` batches each per update, `skip` updates done."""
    taken = []
    for rank in range(processes):
        order = TrainingOrder(43, batch=2, processes=processes, accumulate=accumulate, rank=rank, seed=3)
        order.epoch, order.skip = 4, skip
        clips = list(order)
        assert len(clips) == len(order)
        taken.append([clips[i : i + 2] for i in range(0, len(clips), 2)])
    per_update = processes * accumulate
    batches = [taken[rank][j] for j in range(len(taken[0])) for rank in range(processes)]
    return [
        [clip for batch in batches[i : i + per_update] for clip in batch]
        for i in range(0, len(batches), per_update)
    ]


def test_every_world_size_that_shares_the_global_batch_takes_the_same_clips_at_each_update() -> None:
    """A global batch of 8 as 4 ranks x 1, 2 x 2 or 1 x 4 batches of 2: each update sees the same clips,
    drawn from the same seeds, in the same batches; what does not fill a global batch is left out; a
    resumed epoch, on any of them, sees the rest once."""
    on_four = updates(4, 1)
    assert len(on_four) == 43 // 8 and all(len(update) == 8 for update in on_four)
    assert updates(2, 2) == on_four and updates(1, 4) == on_four
    assert updates(1, 4, skip=2) == on_four[2:] and updates(2, 2, skip=3) == on_four[3:]
    videos = [video for update in on_four for video, _ in update]
    assert len(set(videos)) == len(videos) and set(videos) <= set(range(43))
    other_epoch = TrainingOrder(43, batch=2, processes=4, accumulate=1, rank=0, seed=3)
    other_epoch.epoch = 5
    assert list(other_epoch) != [clip for update in on_four for clip in update[:2]]


def test_step_checkpoints_come_every_checkpoint_minutes_and_give_way_to_the_next(
    tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[int | None] = []  # batches into the epoch of each checkpoint; None: an epoch checkpoint
    save_epoch = TrainingState.save_epoch

    def noting(state: TrainingState, stage_dir: str, keep: int, progress: Any = None) -> None:
        saved.append(None if progress is None else progress[1].batches)
        save_epoch(state, stage_dir, keep, progress)

    monkeypatch.setattr(TrainingState, "save_epoch", noting)
    run_to(tiny_job(tiny_dataset, tmp_path, epochs=2, checkpoint_minutes=1e-6), monkeypatch)
    batches = saved.index(None)
    assert batches >= 2 and saved == [*range(1, batches + 1), None] * 2  # after every update: the time is up
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch-00001.pt",
        "epoch-00002.pt",
        "latest.json",
    ]
