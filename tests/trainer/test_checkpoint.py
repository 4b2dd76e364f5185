"""The checkpoint header: the plain fields of reference files, bare state_dicts and mega3d's own files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mega3d.trainer.checkpoint import FORMAT, CheckpointHeader, load_checkpoint, save_checkpoint
from mega3d.trainer.models import WeightsError, build_model
from mega3d.trainer.records import ClipShape, EpochRecord
from mega3d.trainer.spec import KINETICS_MEAN, KINETICS_STD

TINY = {"widen_factor": 0.0625}


def epoch_record(epoch: int) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=1.5 / epoch,
        train_accuracy=0.25 * epoch,
        val_loss=2.0 / epoch,
        lr=0.003,
        clips_per_s=12.5,
        data_wait=0.05,
        seconds=3.0,
        unreadable=0,
    )


def test_a_reference_file_has_an_epoch_and_an_alias_arch(tmp_path: Path) -> None:
    model = build_model("r3d-18", 7, **TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "r3d18_K_200ep.pth"
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet-18",
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer).state_dict(),
        },
        path,
    )
    header = CheckpointHeader.of(load_checkpoint(str(path)), str(path))
    assert (header.format, header.epoch, header.arch, header.model_name) == (None, 200, "resnet-18", "r3d-18")
    assert header.classes is None and header.clip is None and header.history == [] and header.step == 0


def test_a_bare_state_dict_says_nothing() -> None:
    header = CheckpointHeader.of(build_model("r3d-10", 3, **TINY).state_dict(), "bare.pth")
    assert header == CheckpointHeader() and header.model_name is None


def test_a_mega3d_checkpoint_comes_back_as_written(tmp_path: Path) -> None:
    written = CheckpointHeader(
        epoch=2,
        step=6,
        arch="r3d-10",
        model_options=TINY,
        n_classes=3,
        classes=["left", "right", "still"],
        clip=ClipShape(frames=4, size=16),
        history=[epoch_record(1), epoch_record(2)],
    )
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, written, {"state_dict": build_model("r3d-10", 3, **TINY).state_dict()})
    state = load_checkpoint(path)
    # The reference's fields and mega3d's, in plain types: the history as JSON text, the clip as lists.
    assert (state["format"], state["epoch"], state["arch"]) == (FORMAT, 2, "r3d-10")
    assert state["clip"] == {"frames": 4, "size": 16, "mean": list(KINETICS_MEAN), "std": list(KINETICS_STD)}
    assert [entry["epoch"] for entry in json.loads(state["history"])] == [1, 2]
    assert CheckpointHeader.of(state, path) == written.model_copy(update={"format": FORMAT})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"classes": "walking"}, "'classes' must be a list of class names"),
        ({"classes": ["walking", 3]}, "'classes' must be a list of class names"),
        ({"model_options": ["widen_factor"]}, "'model_options' must be a mapping"),
        ({"clip": {"frames": "many"}}, "the checkpoint's 'clip' must be {frames, size, mean, std}"),
        ({"clip": {"mean": [0.5, 0.5]}}, "the checkpoint's 'clip' must be {frames, size, mean, std}"),
        ({"epoch": "last"}, "epoch: Input should be a valid integer"),
        ({"history": "[{"}, "history: Value error, Expecting"),
        ({"history": [{"epoch": 1}]}, "history[0].train_loss: required field is missing"),
    ],
)
def test_a_bad_header_is_one_line_naming_the_file_and_the_field(fields: dict[str, Any], message: str) -> None:
    state = {"epoch": 3, "arch": "r3d-10", "state_dict": {}, **fields}
    with pytest.raises(WeightsError) as caught:
        CheckpointHeader.of(state, "gs://bucket/model.pt")
    text = str(caught.value)
    assert text.startswith(f"gs://bucket/model.pt: {message}") and "\n" not in text, text


def test_an_unsaid_clip_shape_takes_the_papers_defaults() -> None:
    header = CheckpointHeader.of({"clip": {"frames": 40, "size": 32}}, "partial.pt")
    assert header.clip == ClipShape(frames=40, size=32, mean=KINETICS_MEAN, std=KINETICS_STD)
