"""A dataset's integrity: damaged indexes are refused when loaded, missing or short shards are found before
training, and videos whose bytes differ from their digest are found by the reader and by `verify`."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mega3d.trainer import storage
from mega3d.trainer.data.clips import EvaluationWindows, TrainingClips
from mega3d.trainer.data.format import (
    VERIFY_SHARE,
    ClipReader,
    CorruptVideo,
    DatasetError,
    DatasetIndex,
    dataset_problems,
    index_uri,
    load_index,
    save_index,
    shard_problems,
)
from mega3d.trainer.data.verify import BadVideo, verify_dataset
from mega3d.trainer.data.writer import DatasetWriter
from mega3d.trainer.spec import ClipSpec
from tests.trainer.data.test_format import video


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def six_videos(root: Path) -> Path:
    """Six videos of 5-7 frames in three shards of two videos each."""
    writer = DatasetWriter(str(root), ["a", "b"], shard_bytes=9_000)
    for i in range(6):
        writer.add(f"v{i}", i % 2, "validation" if i == 5 else "training", video(i, frames=5 + i % 3))
    writer.close()
    assert len(load_index(index_uri(str(root))).shards) == 3
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return six_videos(tmp_path / "ds")


def loaded(root: Path) -> DatasetIndex:
    return load_index(index_uri(str(root)))


def flip_byte_inside(root: Path, row: int) -> None:
    """One bit of a video's bytes, in the image data near the end of its first JPEG frame (past the JPEG
    headers): the frames still decode."""
    index = loaded(root)
    shard = Path(index.shards[int(index.columns["shard"][row])])
    data = bytearray(shard.read_bytes())
    offset = int(index.columns["offset"][row])
    frame_bytes = int.from_bytes(data[offset : offset + 4], "little")
    data[offset + 4 + frame_bytes - 10] ^= 1
    shard.write_bytes(bytes(data))


# ---- the index ---------------------------------------------------------------------------------------------


def test_every_truncation_and_bit_flip_of_an_index_is_one_dataset_error(dataset: Path) -> None:
    path = dataset / "index.npz"
    whole = path.read_bytes()
    for cut in range(0, len(whole), 37):
        path.write_bytes(whole[:cut])
        with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: not a mega3d dataset index"):
            load_index(str(path))
    refused = 0
    for position in range(0, len(whole), 11):
        flipped = bytearray(whole)
        flipped[position] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            index = load_index(str(path))
        except DatasetError as error:
            assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
            refused += 1
        else:  # a flip in the zip's local headers, which readers do not use: the columns are intact
            assert index.fingerprint == loaded_whole(path, whole).fingerprint
    assert refused > len(whole) // 11 // 2


def loaded_whole(path: Path, whole: bytes) -> DatasetIndex:
    damaged = path.read_bytes()
    path.write_bytes(whole)
    try:
        return load_index(str(path))
    finally:
        path.write_bytes(damaged)


def set_column(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[DatasetIndex], None]:
    def edit(index: DatasetIndex) -> None:
        index.columns[name] = change(index.columns[name].copy())

    return edit


def at(position: int, value: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(values: np.ndarray) -> np.ndarray:
        values[position] = value
        return values

    return change


def a_second_key_of_v5_at(offset: int) -> Callable[[DatasetIndex], None]:
    """v5, the last video, made 17 frames long, with a second key offset."""

    def edit(index: DatasetIndex) -> None:
        c = index.columns
        c["frames"] = np.where(np.arange(len(index)) == 5, 17, c["frames"]).astype(np.int32)
        c["key"] = np.append(c["key"], np.uint32(offset))
        c["key_start"] = np.append(c["key_start"][:-1], c["key_start"][-1] + 1)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (set_column("label", at(3, 2)), "column 'label': video 'v3' has a label outside the 2 classes"),
        (set_column("label", at(0, -1)), "column 'label': video 'v0' has a label outside the 2 classes"),
        (
            set_column("split", at(2, 7)),
            "column 'split': video 'v2' has a split outside training/validation/",
        ),
        (set_column("shard", at(4, 3)), "column 'shard': video 'v4' names no listed shard"),
        (set_column("length", at(1, 0)), "column 'length': video 'v1' has no bytes"),
        (set_column("frames", at(5, 40)), "column 'key': video 'v5' has not one key per 16 frames"),
        (set_column("key", at(2, 5)), "column 'key': video 'v2' does not begin at its first frame"),
        (a_second_key_of_v5_at(1 << 30), "column 'key': video 'v5' has a key offset past its bytes"),
        (set_column("offset", at(0, -5)), "column 'offset': video 'v0' begins before its shard"),
        (
            set_column("label_start", at(6, 9)),
            "column 'label_start': does not say where each video's entries",
        ),
        (set_column("fps", lambda v: v.astype(np.float64)), "column 'fps': type float64, expected float32"),
        (set_column("digest", lambda v: v[:, :8]), "column 'digest': shape (6, 8), expected (6, 16)"),
        (set_column("height", lambda v: v[:5]), "column 'height': shape (5,), expected (6,)"),
    ],
)
def test_columns_that_do_not_describe_readable_videos_are_one_line(
    dataset: Path, edit: Callable[[DatasetIndex], None], message: str
) -> None:
    index = loaded(dataset)
    edit(index)
    save_index(str(dataset / "index.npz"), index)
    before = files(dataset)
    with pytest.raises(DatasetError) as raised:
        load_index(str(dataset / "index.npz"))
    assert str(raised.value).startswith(f"{dataset / 'index.npz'}: {message}")
    assert "\n" not in str(raised.value)
    assert files(dataset) == before


# ---- shards ------------------------------------------------------------------------------------------------


def test_missing_and_short_shards_are_found_before_training(dataset: Path) -> None:
    index = loaded(dataset)
    assert shard_problems(index) == [] and dataset_problems(str(dataset)) == []
    first, second, third = (Path(uri) for uri in index.shards)
    needed = int((index.columns["offset"] + index.columns["length"])[index.columns["shard"] == 1].max())
    second.write_bytes(second.read_bytes()[: needed - 1])  # one byte short
    third.unlink()
    assert dataset_problems(str(dataset)) == [
        f"{second}: short shard (shorter than the {needed:,} bytes the index places in it)",
        f"{third}: missing shard (2 videos are in it)",
    ]
    assert first.exists() and first.stat().st_size > 0


def test_a_damaged_index_is_the_datasets_problem(dataset: Path) -> None:
    (dataset / "index.npz").write_bytes((dataset / "index.npz").read_bytes()[:100])
    (problem,) = dataset_problems(str(dataset))
    assert problem.startswith(f"{dataset / 'index.npz'}: not a mega3d dataset index (")


# ---- reading -----------------------------------------------------------------------------------------------


def test_a_reader_finds_a_video_whose_bytes_differ_from_its_digest(dataset: Path) -> None:
    flip_byte_inside(dataset, 3)
    index = loaded(dataset)
    assert ClipReader(index, verify_share=0).frames(3, 0, 5).shape == (5, 24, 32, 3)  # it still decodes
    reader = ClipReader(index, verify_share=math.inf)
    with pytest.raises(CorruptVideo, match=r"^v3: its bytes do not match the index's digest$"):
        reader.frames(3, 0, 5)
    assert reader.frames(2, 0, 5).shape == (5, 24, 32, 3)
    # By default a read checks its whole video with a chance of VERIFY_SHARE x the share of the video it
    # reads (here all of it); a video found damaged is refused from then on, unread.
    sampled = ClipReader(index)
    outcomes = []
    for _ in range(100):
        try:
            sampled.frames(3, 0, 5)
            outcomes.append("read")
        except CorruptVideo:
            outcomes.append("refused")
    first = outcomes.index("refused")
    assert outcomes[first:] == ["refused"] * (100 - first) and first < 50


def test_a_sample_of_reads_checks_whole_videos_for_a_share_of_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = DatasetWriter(str(tmp_path / "long"), ["a"])
    for i in range(3):
        writer.add(f"long{i}", 0, "training", video(i, frames=40))  # keys at frames 0, 16 and 32
    writer.close()
    index = loaded(tmp_path / "long")
    reads: list[tuple[int, int]] = []
    reader = ClipReader(index)
    real = reader._shard_bytes

    def counted(row: int, start: int, end: int) -> bytes:
        reads.append((row, end - start))
        return real(row, start, end)

    monkeypatch.setattr(reader, "_shard_bytes", counted)
    for i in range(600):
        reader.frames(i % 3, 0, 1)  # frames 0 to 16 are read for it: 40 % of the video
    whole = [size for row, size in reads if size == int(index.columns["length"][row])]
    clip_bytes = sum(size for row, size in reads if size != int(index.columns["length"][row]))
    assert 0.3 * VERIFY_SHARE < sum(whole) / clip_bytes < 2 * VERIFY_SHARE
    assert len(reads) == 600


def test_what_the_cache_keeps_is_checked(dataset: Path, tmp_path: Path) -> None:
    flip_byte_inside(dataset, 1)
    cache = tmp_path / "cache"
    reader = ClipReader(loaded(dataset), cache_dir=str(cache), verify_share=0)
    with pytest.raises(CorruptVideo, match=r"^v1: its bytes do not match the index's digest$"):
        reader.frames(1, 0, 5)
    assert reader.frames(0, 0, 5).shape == (5, 24, 32, 3)
    assert [path.name for path in cache.iterdir()] == [f"{loaded(dataset).video(0).digest}.bin"]


def test_a_short_shard_read_whole_is_a_corrupt_video(dataset: Path) -> None:
    index = loaded(dataset)
    shard = Path(index.shards[1])
    shard.write_bytes(shard.read_bytes()[:-10])
    last = int(np.flatnonzero(index.columns["shard"] == 1)[-1])
    with pytest.raises(CorruptVideo, match=r"could be read \(short shard\)$"):
        ClipReader(index, verify_share=math.inf).frames(last, 0, 5)


def test_damaged_videos_are_skipped_and_counted_in_training_and_evaluation(dataset: Path) -> None:
    flip_byte_inside(dataset, 0)
    index = loaded(dataset)
    clip = ClipSpec(frames=4, size=16)
    training = TrainingClips(index, "training", clip, verify_share=math.inf)
    _, _, label, skipped = training[0]  # v0 is damaged: v1 takes its place
    assert (label, skipped) == (1, 1)
    assert training[1][3] == 0
    windows = EvaluationWindows(index, "training", 4, 16, verify_share=math.inf)
    assert [windows[i] is None for i in range(3)] == [True, True, False]  # v0 has 5 frames: 2 windows


# ---- verify ------------------------------------------------------------------------------------------------


def test_verify_names_each_damaged_video_and_what_is_wrong(dataset: Path) -> None:
    assert verify_dataset(loaded(dataset), workers=3).bad == []
    flip_byte_inside(dataset, 1)
    index = loaded(dataset)
    second, third = Path(index.shards[1]), Path(index.shards[2])
    size = second.stat().st_size - 10
    second.write_bytes(second.read_bytes()[:size])
    shutil.move(third, third.with_suffix(".gone"))
    seen: list[tuple[int, int]] = []
    result = verify_dataset(index, workers=2, progress=lambda done, total: seen.append((done, total)))
    ends = index.columns["offset"] + index.columns["length"]
    assert result.bad == [
        BadVideo("v1", index.shards[0], "digest mismatch"),
        BadVideo("v3", index.shards[1], f"short shard ({size:,} bytes; the video ends at {int(ends[3]):,})"),
        BadVideo("v4", index.shards[2], "missing shard"),
        BadVideo("v5", index.shards[2], "missing shard"),
    ]
    assert (result.videos, result.shards) == (6, 3)
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) > 2


def test_verify_tells_readable_videos_from_those_an_object_store_refuses(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stores that answer a read past an object's end with an error (status 416) instead of fewer bytes:
    the videos of that read are read one by one."""
    index = loaded(dataset)
    second = Path(index.shards[1])
    second.write_bytes(second.read_bytes()[:-10])
    real = storage.read_range

    def strict(uri: str, start: int, end: int) -> bytes:
        if end > Path(uri).stat().st_size:
            raise RuntimeError("416 Requested Range Not Satisfiable")
        return real(uri, start, end)

    monkeypatch.setattr(storage, "read_range", strict)
    assert verify_dataset(index, workers=1).bad == [
        BadVideo("v3", str(second), "cannot be read (416 Requested Range Not Satisfiable)")
    ]
