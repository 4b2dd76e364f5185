"""`mega3d data ingest` and `data synth` given hostile or mistaken input: one line each, exit code 2, in
bounded time, nothing left that blocks the corrected command."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from mega3d.trainer.data.format import index_uri, load_index
from tests.cli.test_ingest import ingest, real_video, write_reference_dataset
from tests.conftest import MEGA3D, mega3d


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


def videos_folder(root: Path) -> Path:
    """ROOT with two real videos, and a file outside it that no list may reach."""
    folder = root / "videos"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (folder / name).symlink_to(real_video())
    (root / "secret.mp4").symlink_to(real_video())
    return folder


def fifo(folder: Path) -> None:
    os.mkfifo(folder / "pipe.mp4")


def directory(folder: Path) -> None:
    (folder / "dir.mp4").mkdir()


# (what is wrong, how ROOT is made worse, the list's second line, the one line after the list's path)
HOSTILE_ROWS: list[tuple[str, Callable[[Path], None] | None, str, str]] = [
    ("a FIFO", fifo, "pipe.mp4,walk", "line 2: 'pipe.mp4' is a FIFO (named pipe), not a file"),
    ("a folder", directory, "dir.mp4,walk", "line 2: 'dir.mp4' is a directory, not a file"),
    ("a parent path", None, "../secret.mp4,walk", "line 2: '../secret.mp4' is not a path inside the root"),
    ("a nested parent", None, "x/../../secret.mp4,walk", "line 2: 'x/../../secret.mp4' is not a path inside"),
    ("an absolute path", None, "{root}/secret.mp4,walk", "line 2: '{root}/secret.mp4' is not a path inside"),
    ("an empty label", None, "b.mp4,", "line 2: an empty label (every video needs a class name)"),
    ("an empty tag", None, "b.mp4,walk|", "line 2: an empty label"),
    ("a blank label", None, "b.mp4,  ", "line 2: an empty label"),
]


@pytest.mark.parametrize(("wrong", "worsen", "row", "said"), HOSTILE_ROWS, ids=[r[0] for r in HOSTILE_ROWS])
def test_hostile_rows_are_refused_before_anything_is_read_or_written(
    tmp_path: Path, wrong: str, worsen: Callable[[Path], None] | None, row: str, said: str
) -> None:
    folder = videos_folder(tmp_path)
    if worsen is not None:
        worsen(folder)
    listing = tmp_path / "list.csv"
    listing.write_text(f"a.mp4,walk\n{row.format(root=tmp_path)}\n")
    result = ingest(folder, "csv", listing, tmp_path / "never", "--workers", "1")  # 60 s at most
    assert one_error_line(result).startswith(f"{listing}: {said.format(root=tmp_path)}")
    assert not (tmp_path / "never").exists()


def test_a_kinetics_label_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    folder = videos_folder(tmp_path)
    listing = tmp_path / "k.csv"
    listing.write_text("label,youtube_id,time_start,time_end\n../..,abc,0,10\n")
    result = ingest(folder, "kinetics", listing, tmp_path / "never")
    said = f"{listing}: line 2: '../../abc_000000_000010.mp4' is not a path inside the root {folder}"
    assert one_error_line(result) == said
    assert not (tmp_path / "never").exists()


def test_a_fifo_frame_and_a_fifo_annotation_file_end_in_bounded_time(tmp_path: Path) -> None:
    write_reference_dataset(tmp_path)
    frame = tmp_path / "frames" / "jump" / "v_jump_2" / "image_00003.jpg"
    frame.unlink()
    os.mkfifo(frame)
    result = ingest(tmp_path / "frames", "reference-jpg", tmp_path / "ann.json", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    errors = {e.id: e.error for e in load_index(index_uri(str(tmp_path / "out"))).errors}
    assert errors["v_jump_2"] == f"{frame}: a FIFO (named pipe), not a regular file"

    os.mkfifo(tmp_path / "ann.fifo")
    piped = ingest(tmp_path / "frames", "reference-jpg", tmp_path / "ann.fifo", tmp_path / "never")
    said = f"{tmp_path / 'ann.fifo'}: not a regular file, so not the annotation file"
    assert one_error_line(piped) == said


def audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        stream.layout = "mono"
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_unreadable_videos_are_listed_in_words_that_name_the_file(tmp_path: Path) -> None:
    folder = videos_folder(tmp_path)
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    audio_only(folder / "sound.mp4")
    (tmp_path / "list.csv").write_text("a.mp4,walk\nbroken.mp4,walk\nsound.mp4,walk\ngone.mp4,walk\n")
    result = ingest(folder, "csv", tmp_path / "list.csv", tmp_path / "out", "--short-side", "32")
    assert result.returncode == 0, result.stderr
    assert "3 unreadable (listed in the index's errors): broken.mp4: " in result.stdout
    errors = {e.id: e.error for e in load_index(index_uri(str(tmp_path / "out"))).errors}
    assert errors == {
        "broken.mp4": f"{folder / 'broken.mp4'}: not a video file FFmpeg can read (its data is invalid)",
        "sound.mp4": f"{folder / 'sound.mp4'}: no video stream in it (audio only?)",
        "gone.mp4": f"{folder / 'gone.mp4'}: no such file",
    }


def test_a_segment_beyond_an_hdf5_files_frames_is_said_so(tmp_path: Path) -> None:
    import h5py

    from mega3d.trainer.data.format import encode_jpeg

    (tmp_path / "h5" / "a").mkdir(parents=True)
    with h5py.File(tmp_path / "h5" / "a" / "v.hdf5", "w") as video_file:
        frames = video_file.create_dataset("video", (5,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        for i in range(5):
            frames[i] = np.frombuffer(encode_jpeg(np.zeros((8, 8, 3), np.uint8)), np.uint8)
    (tmp_path / "h5" / "a" / "w.hdf5").write_bytes(b"not hdf5")
    database = {
        video: {"subset": "training", "annotations": {"label": "a", "segment": [0, end]}}
        for video, end in (("v", 102), ("w", 2))
    }
    (tmp_path / "ann.json").write_text(json.dumps({"labels": ["a"], "database": database}))
    result = ingest(tmp_path / "h5", "reference-hdf5", tmp_path / "ann.json", tmp_path / "never")
    path = tmp_path / "h5" / "a" / "v.hdf5"
    assert one_error_line(result) == (
        f"{tmp_path / 'never'}: no video could be read ({path}: the annotation's segment asks for frames 0 "
        "to 101, the file holds 5 (0 to 4))"
    )
    assert not (tmp_path / "never").exists()


def reference_json(root: Path) -> Path:
    write_reference_dataset(root)
    return root / "ann.json"


def csv_list(root: Path) -> Path:
    (root / "list.csv").write_text("path,label\na.mp4,walk\n")
    return root / "list.csv"


def kinetics_csv(root: Path) -> Path:
    (root / "k700.csv").write_text("label,youtube_id,time_start,time_end,split\nwalk,abc,0,10,train\n")
    return root / "k700.csv"


def ucf_folder(root: Path) -> Path:
    (root / "lists").mkdir()
    (root / "lists" / "classInd.txt").write_text("1 walk\n")
    return root / "lists"


# (what the file is, how it is made, the --format given, the one line after the file's path)
MISMATCHES: list[tuple[str, Callable[[Path], Path], str, str]] = [
    (
        "a CSV list as the default JSON",
        csv_list,
        "reference-jpg",
        "not JSON, so not a reference annotation file (line 1 column 1); it looks like a CSV list of "
        "path,label[,split]: use --format csv",
    ),
    (
        "a reference JSON as a CSV list",
        reference_json,
        "csv",
        "JSON, not a video list of path,label[,split]; it looks like a reference annotation JSON: use "
        "--format reference-jpg or reference-hdf5",
    ),
    (
        "a Kinetics CSV as a CSV list",
        kinetics_csv,
        "csv",
        "line 1: expected path,label[,split], got 5 fields; it looks like a Kinetics CSV: use --format "
        "kinetics",
    ),
    (
        "UCF-101's folder as a JSON",
        ucf_folder,
        "reference-jpg",
        "a folder, not the annotation file; it looks like UCF-101's split lists: use --format ucf101",
    ),
]


@pytest.mark.parametrize(("what", "make", "given", "said"), MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_an_annotation_file_of_another_format_is_named_with_the_formats_that_fit(
    tmp_path: Path, what: str, make: Callable[[Path], Path], given: str, said: str
) -> None:
    annotations = make(tmp_path)
    result = ingest(tmp_path, given, annotations, tmp_path / "never")
    assert one_error_line(result) == f"{annotations}: {said}"
    assert not (tmp_path / "never").exists()


def limited_memory(megabytes: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, megabytes << 20))

    return limit


def synth(*args: str, memory_mb: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MEGA3D, "data", "synth", *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=None if memory_mb is None else limited_memory(memory_mb),
    )


SMALL = ("--size", "16", "--frames", "4", "--videos-per-class", "2")


def test_synth_out_of_memory_or_too_large_is_one_line_and_blocks_nothing(tmp_path: Path) -> None:
    out = str(tmp_path / "motion")
    huge = synth(out, "--size", "4096", "--frames", "100")
    assert one_error_line(huge) == (
        f"{out}: frames x size x size is 1,677,721,600 pixels a video, more than 67,108,864; choose a "
        "smaller size or fewer frames"
    )
    assert not (tmp_path / "motion").exists()
    # Within the bounds, on a machine with too little memory (800 MiB of address space here).
    starved = synth(out, "--size", "1024", "--frames", "60", memory_mb=800)
    said = f"{out}: not enough memory for videos of 60 frames of 1024x1024; try a smaller --size"
    assert one_error_line(starved) == said
    corrected = synth(out, *SMALL, "--classes", "3")  # other classes: another plan than the failed one's
    assert corrected.returncode == 0, corrected.stderr
    assert len(load_index(index_uri(out))) == 6
    assert sorted(p.name for p in (tmp_path / "motion").iterdir())[0] == "index.npz"


def test_a_failed_ingest_does_not_block_the_corrected_one(tmp_path: Path) -> None:
    folder = videos_folder(tmp_path)
    (tmp_path / "list.csv").write_text("a.mp4,walk\nb.mp4,run\n")
    output = tmp_path / "out"
    missing = ingest(tmp_path / "nowhere", "csv", tmp_path / "list.csv", output)
    assert one_error_line(missing) == f"{tmp_path / 'nowhere'}: no such directory"
    assert not output.exists()

    (tmp_path / "empty").mkdir()  # a ROOT that exists but holds none of the videos: nothing readable
    wrong = ingest(tmp_path / "empty", "csv", tmp_path / "list.csv", output, "--short-side", "32")
    assert one_error_line(wrong).startswith(f"{output}: no video could be read ({tmp_path / 'empty'}/a.mp4: ")
    assert not output.exists()

    for root in (tmp_path / "empty", folder):  # the same command once the files are there, or the right ROOT
        if root == tmp_path / "empty":
            shutil.copy(real_video(), root / "a.mp4")
            shutil.copy(real_video(), root / "b.mp4")
        fixed = ingest(root, "csv", tmp_path / "list.csv", output, "--short-side", "32")
        assert fixed.returncode == 0, fixed.stderr
        assert [v.id for v in load_index(index_uri(str(output))).videos()] == ["a.mp4", "b.mp4"]
        shutil.rmtree(output)


def test_a_second_synth_of_a_killed_one_writes_each_video_once(tmp_path: Path) -> None:
    """A synth that died mid-way leaves shards no one can resume: the next one starts over."""
    from mega3d.trainer.data.synth import class_names
    from mega3d.trainer.data.writer import DatasetWriter
    from mega3d.trainer.spec import SyntheticSpec

    out = str(tmp_path / "motion")
    params = SyntheticSpec(size=16, frames=4, videos_per_class=2)
    killed = DatasetWriter(out, class_names(params))  # one shard written, then no index: as if killed
    killed.add(f"{class_names(params)[0]}-s0-0000", 0, "training", np.zeros((4, 16, 16, 3), np.uint8))
    killed.shards.flush()
    again = mega3d("data", "synth", out, *SMALL)
    assert again.returncode == 0, again.stderr
    ids = [v.id for v in load_index(index_uri(out)).videos()]
    assert len(ids) == len(set(ids)) == 8
