from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data.format import (
    DatasetError,
    DatasetWriter,
    index_uri,
    load_index,
    merge,
    read_frames,
    save_index,
)


def video(seed: int, frames: int = 5, size: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(frames, size, size, 3), dtype=np.uint8)


def write(uri: str, classes: list[str], count: int, shard_bytes: int) -> list[np.ndarray]:
    writer = DatasetWriter(uri, classes, shard_bytes=shard_bytes)
    videos = [video(i) for i in range(count)]
    for i, frames in enumerate(videos):
        writer.add(f"v{i}", i % len(classes), "training" if i % 3 else "validation", frames)
    writer.close()
    return videos


def test_videos_round_trip_across_shards(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    videos = write(uri, ["a", "b"], count=7, shard_bytes=1000)  # 540 bytes a video: several shards
    index = load_index(index_uri(uri))
    assert len(index.shards) > 1
    assert [v.label for v in index.videos] == [i % 2 for i in range(7)]
    assert len(index.subset("validation")) == 3
    for entry, frames in zip(index.videos, videos, strict=True):
        np.testing.assert_array_equal(read_frames(index, entry, 0, entry.frames), frames)
        np.testing.assert_array_equal(read_frames(index, entry, 2, 2), frames[2:4])
        np.testing.assert_array_equal(read_frames(index, entry, 3, 10), frames[3:])  # clipped at the end


def test_merge_concatenates_label_spaces_and_shares_shards(tmp_path: Path) -> None:
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    write(first, ["run", "jump"], count=4, shard_bytes=10_000)
    second_videos = write(second, ["swim"], count=3, shard_bytes=10_000)
    merged = merge([("k", load_index(index_uri(first))), ("m", load_index(index_uri(second)))])
    assert merged.classes == ["k/run", "k/jump", "m/swim"]
    assert [v.label for v in merged.videos] == [0, 1, 0, 1, 2, 2, 2]
    assert merged.videos[4].id == "m/v0"

    # The merged index lives elsewhere and points at the original shards: nothing is copied.
    target = str(tmp_path / "elsewhere" / "index.json")
    save_index(target, merged)
    reloaded = load_index(target)
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["index.json"]
    np.testing.assert_array_equal(read_frames(reloaded, reloaded.videos[5], 0, 5), second_videos[1])


def test_an_existing_dataset_is_never_overwritten(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    write(uri, ["a"], count=2, shard_bytes=10_000)
    before = (tmp_path / "ds" / "index.json").read_bytes()
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(uri, ["a"])
    assert (tmp_path / "ds" / "index.json").read_bytes() == before


def test_missing_index_and_bad_frames_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset index"):
        load_index(index_uri(str(tmp_path / "nothing")))
    writer = DatasetWriter(str(tmp_path / "ds"), ["a"])
    with pytest.raises(DatasetError, match=r"uint8 \(T, H, W, 3\)"):
        writer.add("v", 0, "training", np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match="subset must be one of"):
        writer.add("v", 0, "train", video(0))
    with pytest.raises(DatasetError, match="label 1 is not one of the 1 classes"):
        writer.add("v", 1, "training", video(0))
    with pytest.raises(DatasetError, match=r"got uint8 \(0, 6, 6, 3\)"):
        writer.add("v", 0, "training", video(0, frames=0))
