"""The checkpoint header: the plain fields of reference files, bare state_dicts and mega3d's own files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mega3d.trainer.checkpoint import (
    FORMAT,
    CheckpointError,
    CheckpointHeader,
    load_checkpoint,
    save_checkpoint,
)
from mega3d.trainer.convert import main as convert_main
from mega3d.trainer.models import WeightsError, build_model
from mega3d.trainer.predict import PredictError, load_model
from mega3d.trainer.records import ClipShape, EpochRecord
from mega3d.trainer.spec import KINETICS_MEAN, KINETICS_STD
from mega3d.trainer.train import Trainer
from tests.trainer.test_train import tiny_job

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


# ---- the recorded hash of final checkpoints ------------------------------------------------------------


def saved_checkpoint(path: Path, arch: str = "r3d-10", options: dict[str, Any] | None = None) -> None:
    options = TINY if options is None else options
    header = CheckpointHeader(arch=arch, model_options=options, n_classes=3, classes=["a", "b", "c"])
    save_checkpoint(str(path), header, {"state_dict": build_model(arch, 3, **options).state_dict()})


def changed_byte(path: Path) -> None:
    """One bit of a tensor's bytes (past the archive's headers): the file still unpickles."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def test_a_saved_checkpoint_records_its_hash_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    saved_checkpoint(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "checkpoint.pt.sha256").read_text() == f"{digest}  checkpoint.pt\n"
    assert load_checkpoint(str(path))["classes"] == ["a", "b", "c"]
    (tmp_path / "checkpoint.pt.sha256").unlink()  # a file mega3d did not write: read as it is
    assert load_checkpoint(str(path))["classes"] == ["a", "b", "c"]


Loader = Callable[[Path, Path, pytest.CaptureFixture[str]], str]


def load_for_predict(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(PredictError) as raised:
        load_model(str(path))
    return str(raised.value)


def load_for_import(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """`python -m mega3d.trainer.convert`, as `mega3d models import` runs it: exit code 2, one line."""
    with pytest.raises(SystemExit) as raised:
        convert_main([str(path), "-o", str(tmp_path / "imported.pt")])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err.removeprefix("error: ").removesuffix("\n")


def load_for_fine_tuning(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A stage's model, as fine-tuning (and evaluation) builds it from `init_checkpoint`."""
    job = tiny_job(str(tmp_path / "no-dataset"), tmp_path / "out")
    trainer = Trainer(job.model_copy(update={"init_checkpoint": str(path)}))
    trainer.classes = ["a", "b", "c"]
    with pytest.raises(CheckpointError) as raised:
        trainer._build_model()
    return str(raised.value)


@pytest.mark.parametrize("load", [load_for_predict, load_for_import, load_for_fine_tuning])
def test_a_checkpoint_that_no_longer_matches_its_hash_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], load: Loader
) -> None:
    path = tmp_path / "checkpoint.pt"
    saved_checkpoint(path)
    changed_byte(path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    message = load(path, tmp_path, capsys)
    assert message == f"{path}: its bytes do not match the SHA-256 recorded in {path}.sha256"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
