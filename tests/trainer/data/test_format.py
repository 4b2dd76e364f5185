from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mega3d.trainer import storage
from mega3d.trainer.data.format import (
    ClipReader,
    CorruptVideo,
    DatasetError,
    DatasetIndex,
    MergedSource,
    SubsetSource,
    UnifiedClasses,
    UnreadableVideo,
    decode_jpeg,
    encode_jpeg,
    index_uri,
    load_index,
    merge,
    save_index,
)
from mega3d.trainer.data.writer import (
    DatasetWriter,
    ShardWriter,
    SingleWriterPlan,
    finish,
    jpeg_frames,
    start,
)


def video(seed: int, frames: int = 5, height: int = 24, width: int = 32) -> np.ndarray:
    """Smooth moving gradients with a little noise: content JPEG keeps well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 1, 3)
    clip = [
        np.stack([127 + 100 * np.sin((x + 2 * t) / 5 + 6 * b) * np.cos(y / 7 + b) for b in base], axis=-1)
        + rng.normal(0, 2, (height, width, 3))
        for t in range(frames)
    ]
    return np.clip(clip, 0, 255).astype(np.uint8)


def stored(frames: np.ndarray) -> np.ndarray:
    """What a reader gets back: the frames after one JPEG round trip."""
    return np.stack([decode_jpeg(encode_jpeg(frame)) for frame in frames])


def write(uri: str, classes: list[str], count: int, shard_bytes: int, prefix: str = "v") -> list[np.ndarray]:
    writer = DatasetWriter(uri, classes, shard_bytes=shard_bytes)
    videos = [video(i, frames=5 + i % 3) for i in range(count)]
    for i, frames in enumerate(videos):
        writer.add(f"{prefix}{i}", i % len(classes), "training" if i % 3 else "validation", frames)
    writer.close()
    return videos


def test_videos_round_trip_across_shards(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    videos = write(uri, ["a", "b"], count=7, shard_bytes=6000)  # about 1 kB a frame: several shards
    index = load_index(index_uri(uri))
    assert len(index.shards) > 1 and len(index) == 7
    assert index.single_labels().tolist() == [i % 2 for i in range(7)]
    assert index.rows("validation").tolist() == [0, 3, 6]
    reader = ClipReader(index)
    for row, frames in enumerate(videos):
        expected = stored(frames)
        np.testing.assert_array_equal(reader.frames(row, 0, len(frames)), expected)
        np.testing.assert_array_equal(reader.frames(row, 2, 2), expected[2:4])
        np.testing.assert_array_equal(reader.frames(row, 3, 10), expected[3:])  # clipped at the end
        error = np.abs(reader.frames(row, 0, len(frames)).astype(float) - frames).mean()
        assert error < 3, error  # JPEG at quality 90 stays close to the source
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "index.npz",
        *(Path(s).name for s in index.shards),
    ]


def test_a_clip_is_one_ranged_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "ds")
    writer = DatasetWriter(uri, ["a"])
    frames = video(0, frames=70)
    writer.add("long", 0, "training", frames)
    writer.close()
    reads: list[tuple[int, int]] = []
    real_read = storage.RangeReader.read

    def counted(self: storage.RangeReader, start: int, end: int) -> bytes:
        reads.append((start, end))
        return real_read(self, start, end)

    monkeypatch.setattr(storage.RangeReader, "read", counted)
    index = load_index(index_uri(uri))
    reader, expected = ClipReader(index, verify_share=0), stored(frames)  # a sampled check reads it whole
    keys = index.columns["key"][index.columns["key_start"][0] : index.columns["key_start"][1]]
    assert len(keys) == 5  # frames 0, 16, 32, 48, 64
    for first_frame, count, span in (
        (20, 10, (16, 32)),
        (30, 16, (16, 48)),
        (64, 16, (64, 70)),
        (0, 16, (0, 16)),
    ):
        reads.clear()
        clip = reader.frames(0, first_frame, count)
        np.testing.assert_array_equal(clip, expected[first_frame : first_frame + count])
        first, after = span
        end = keys[after // 16] if after < 70 else index.video(0).length
        assert reads == [(keys[first // 16], end)]  # one read: from the key frame before to the one after


def test_a_local_cache_keeps_each_video_by_content_hash(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    videos = write(uri, ["a"], count=2, shard_bytes=1 << 20)
    index = load_index(index_uri(uri))
    cache = tmp_path / "cache"
    cache.mkdir()
    reader = ClipReader(index, cache_dir=str(cache))
    np.testing.assert_array_equal(reader.frames(0, 1, 2), stored(videos[0])[1:3])
    assert [p.name for p in cache.iterdir()] == [f"{index.video(0).digest}.bin"]
    for shard in index.shards:  # from now on the cache alone serves the video
        Path(shard).unlink()
    np.testing.assert_array_equal(ClipReader(index, cache_dir=str(cache)).frames(0, 0, 5), stored(videos[0]))


def test_damaged_bytes_are_corrupt_videos(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    write(uri, ["a"], count=2, shard_bytes=1 << 20)
    index = load_index(index_uri(uri))
    first, second = index.video(0), index.video(1)
    shard = Path(index.shards[0])
    data = bytearray(shard.read_bytes())
    data[first.offset : first.offset + 4] = (1 << 30).to_bytes(4, "little")  # a length past the video's end
    data[second.offset + 4 : second.offset + 44] = bytes(40)  # the JPEG header of its first frame
    shard.write_bytes(bytes(data))
    reader = ClipReader(load_index(index_uri(uri)), verify_share=0)  # what decoding finds, digests aside
    with pytest.raises(
        CorruptVideo, match=r"v0: frames cannot be decoded \(frame 0 runs past the video's bytes"
    ):
        reader.frames(0, 0, 2)
    with pytest.raises(CorruptVideo, match="v1: frames cannot be decoded"):
        reader.frames(1, 0, 2)
    assert reader.frames(1, 1, 2).shape == (2, 24, 32, 3)  # the other frames still decode


def test_merge_concatenates_label_spaces_and_shares_shards(tmp_path: Path) -> None:
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    write(first, ["run", "jump"], count=4, shard_bytes=10_000, prefix="k")
    second_videos = write(second, ["swim"], count=3, shard_bytes=10_000, prefix="m")
    a, b = load_index(index_uri(first)), load_index(index_uri(second))
    merged = merge([("k", a), ("m", b)])
    assert merged.classes == ["k/run", "k/jump", "m/swim"]
    assert merged.single_labels().tolist() == [0, 1, 0, 1, 2, 2, 2]
    assert merged.video(4).id == "m0"
    assert [s.label_offset for s in merged.sources] == [0, 2]
    assert [s.fingerprint for s in merged.sources] == [a.fingerprint, b.fingerprint]

    # The merged index lives elsewhere and points at the original shards: nothing is copied.
    target = str(tmp_path / "elsewhere" / "index.npz")
    save_index(target, merged)
    reloaded = load_index(target)
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["index.npz"]
    assert reloaded.fingerprint == merged.fingerprint
    np.testing.assert_array_equal(ClipReader(reloaded).frames(5, 0, 6), stored(second_videos[1]))

    with pytest.raises(DatasetError, match="video ids clash: 'k0' is in k and in again"):
        merge([("k", a), ("again", a)])
    with pytest.raises(DatasetError, match="two datasets are named 'k'"):
        merge([("k", a), ("k", b)])


def test_the_fingerprint_follows_the_content_not_the_place(tmp_path: Path) -> None:
    write(str(tmp_path / "one"), ["a", "b"], count=4, shard_bytes=10_000)
    write(str(tmp_path / "two"), ["a", "b"], count=4, shard_bytes=1_000)  # other shards, same videos
    one, two = (load_index(index_uri(str(tmp_path / name))) for name in ("one", "two"))
    assert one.fingerprint == two.fingerprint and len(one.shards) != len(two.shards)
    relabelled = one.select(np.arange(len(one)), one.classes, np.array([1, 0]))
    assert relabelled.fingerprint != one.fingerprint


def test_multi_label_videos_and_selection(tmp_path: Path) -> None:
    uri = str(tmp_path / "tags")
    start(uri, SingleWriterPlan(classes=["a", "b", "c"]))
    writer = ShardWriter(uri, n_classes=3)
    for order, labels in enumerate(([0, 2], [1], [2, 1, 0])):
        writer.add(order, f"v{order}", labels, "training", jpeg_frames(video(order)), 24, 32, 30.0)
    writer.flush()
    index = finish(uri, ["a", "b", "c"], multi_label=True)
    reloaded = load_index(index_uri(uri))
    assert reloaded.multi_label and [v.labels for v in reloaded.videos()] == [(0, 2), (1,), (2, 1, 0)]
    with pytest.raises(DatasetError, match="multi-label"):
        index.single_labels()
    # Keep classes c and a (renumbered 0 and 1): v1 has neither and is dropped.
    kept = reloaded.select(np.arange(3), ["c", "a"], np.array([1, -1, 0]))
    assert [(v.id, v.labels) for v in kept.videos()] == [("v0", (1, 0)), ("v2", (0, 1))]


def test_an_existing_dataset_is_never_overwritten(tmp_path: Path) -> None:
    uri = str(tmp_path / "ds")
    write(uri, ["a"], count=2, shard_bytes=10_000)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(uri, ["a"])
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before


def test_missing_index_and_bad_frames_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset index"):
        load_index(index_uri(str(tmp_path / "nothing")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.npz").write_bytes(b"not numpy")
    with pytest.raises(DatasetError, match="not a mega3d dataset index"):
        load_index(index_uri(str(tmp_path / "junk")))
    writer = DatasetWriter(str(tmp_path / "ds"), ["a"])
    with pytest.raises(DatasetError, match=r"uint8 \(T, H, W, 3\)"):
        writer.add("v", 0, "training", np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(DatasetError, match="split must be one of"):
        writer.add("v", 0, "train", video(0))
    with pytest.raises(DatasetError, match=r"labels \[1\] are not among the 1 classes"):
        writer.add("v", 1, "training", video(0))
    with pytest.raises(DatasetError, match=r"got uint8 \(0, 24, 32, 3\)"):
        writer.add("v", 0, "training", np.zeros((0, 24, 32, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="no video could be read"):
        writer.close()


def test_an_index_of_many_videos_is_columns(tmp_path: Path) -> None:
    """No Python object per video: 100k videos save and load as a handful of arrays."""
    n = 100_000
    columns = {
        "id": np.char.add(b"video-", np.arange(n).astype("S")),
        "label_start": np.arange(n + 1, dtype=np.int64),
        "label": (np.arange(n) % 700).astype(np.int32),
        "key_start": np.arange(0, 19 * n + 1, 19, dtype=np.int64),  # 300 frames: keys 0, 16, ..., 288
        "key": np.tile(np.arange(19, dtype=np.uint32) * 16_000, n),
        "split": np.zeros(n, dtype=np.uint8),
        "shard": (np.arange(n) // 1000).astype(np.int32),
        "offset": np.zeros(n, dtype=np.int64),
        "length": np.full(n, 300_000, dtype=np.int64),  # past its last key (288 x 1000)
        "frames": np.full(n, 300, dtype=np.int32),
        "height": np.full(n, 128, dtype=np.int32),
        "width": np.full(n, 171, dtype=np.int32),
        "fps": np.full(n, 30, dtype=np.float32),
        "digest": np.zeros((n, 16), dtype=np.uint8),
    }
    index = DatasetIndex([f"c{i}" for i in range(700)], [f"/s/{i}.bin" for i in range(100)], columns)
    save_index(str(tmp_path / "index.npz"), index)
    loaded = load_index(str(tmp_path / "index.npz"))
    assert len(loaded) == n and loaded.video(n - 1).id == f"video-{n - 1}"
    assert loaded.columns["key"][loaded.columns["key_start"][n - 1] + 2] == 32_000
    assert loaded.fingerprint == index.fingerprint


def small_columns(n: int) -> dict[str, np.ndarray]:
    """The columns of n made-up videos, 5 frames each, in shard 0."""
    return {
        "id": np.char.add(b"v", np.arange(n).astype("S")),
        "label_start": np.arange(n + 1, dtype=np.int64),
        "label": (np.arange(n) % 2).astype(np.int32),
        "key_start": np.arange(n + 1, dtype=np.int64),
        "key": np.zeros(n, dtype=np.uint32),
        "split": (np.arange(n) % 2).astype(np.uint8),
        "shard": np.zeros(n, dtype=np.int32),
        "offset": np.arange(n, dtype=np.int64) * 100,
        "length": np.full(n, 100, dtype=np.int64),
        "frames": np.full(n, 5, dtype=np.int32),
        "height": np.full(n, 8, dtype=np.int32),
        "width": np.full(n, 8, dtype=np.int32),
        "fps": np.full(n, 30, dtype=np.float32),
        "digest": np.arange(n * 16, dtype=np.uint8).reshape(n, 16),
    }


def write_with_header(path: Path, header: dict[str, object], columns: dict[str, np.ndarray]) -> None:
    """An index or manifest file as mega3d has always laid them out: a sorted-key JSON header beside the
    columns."""
    np.savez(path, header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8), **columns)


def header_bytes(path: Path) -> bytes:
    with np.load(path) as arrays:
        return bytes(arrays["header"].tobytes())


def test_an_index_file_of_earlier_versions_loads_and_saves_unchanged(tmp_path: Path) -> None:
    fingerprint = "0757371cecabb3ea0c18390cff39835e"  # as the code before typed headers hashed these videos
    header = {
        "format": "mega3d-video/2",
        "classes": ["k/run", "k/jump"],
        "shards": ["shard-a.bin", "gs://bucket/other/shard-b.bin"],
        "multi_label": False,
        "sources": [
            {"name": "k", "classes": 3, "label_offset": 0, "fingerprint": "f" * 32, "uri": "gs://bucket/k"},
            {"unify": {"k/run": ["k/run", "k/sprint"]}},
            {"subset": {"categories": 0.5, "instances": 1.0, "seed": 3}, "labels": [0, 2], "uri": "merged"},
        ],
        "errors": [{"id": "gone", "error": "No such file"}],
        "fingerprint": fingerprint,
    }
    write_with_header(tmp_path / "index.npz", header, small_columns(4))
    index = load_index(str(tmp_path / "index.npz"))
    assert index.fingerprint == fingerprint
    assert DatasetIndex(index.classes, index.shards, index.columns).fingerprint == fingerprint  # recomputed
    assert index.shards == [str(tmp_path / "shard-a.bin"), "gs://bucket/other/shard-b.bin"]
    merged, unified, part = index.sources
    assert isinstance(merged, MergedSource) and (merged.name, merged.classes, merged.uri) == (
        "k",
        3,
        "gs://bucket/k",
    )
    assert isinstance(unified, UnifiedClasses) and unified.unify == {"k/run": ["k/run", "k/sprint"]}
    assert isinstance(part, SubsetSource) and (part.subset.seed, part.labels, part.uri) == (
        3,
        [0, 2],
        "merged",
    )
    assert index.errors == [UnreadableVideo(id="gone", error="No such file")]
    save_index(str(tmp_path / "again.npz"), index)
    assert header_bytes(tmp_path / "again.npz") == header_bytes(tmp_path / "index.npz")


def test_malformed_index_headers_are_clear_errors(tmp_path: Path) -> None:
    header = {
        "format": "mega3d-video/2",
        "classes": ["a", "b"],
        "shards": ["s.bin"],
        "multi_label": False,
        "sources": [],
        "fingerprint": "x",
    }
    path = tmp_path / "index.npz"
    write_with_header(path, header, small_columns(2))
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{path}: not a mega3d dataset index (header: errors: required field is missing)"),
    ):
        load_index(str(path))
    write_with_header(path, {**header, "format": "mega3d-video/1", "classes": 2}, small_columns(2))
    with pytest.raises(
        DatasetError, match=re.escape(f"{path}: format is 'mega3d-video/1', expected 'mega3d-video/2'")
    ):
        load_index(str(path))


def test_an_unfinished_datasets_work_files_are_checked(tmp_path: Path) -> None:
    uri, plan = str(tmp_path / "ds"), SingleWriterPlan(classes=["a"])
    start(uri, plan)
    writer = ShardWriter(uri, n_classes=1)
    writer.add(0, "v0", [0], "training", jpeg_frames(video(0)), 24, 32, 30.0)
    writer.add_error(1, "v1", "gone")
    writer.flush()
    writer.add_error(2, "v2", "gone too")
    writer.flush()
    work = tmp_path / "ds" / "ingest"
    assert json.loads((work / "plan.json").read_text()) == {"classes": ["a"], "writer": "single"}
    first, second = sorted(work.glob("shard-*.npz"))
    assert json.loads(header_bytes(first)) == {
        "shard": f"{first.stem}.bin",
        "errors": [{"order": 1, "id": "v1", "error": "gone"}],
    }
    assert json.loads(header_bytes(second)) == {
        "shard": None,
        "errors": [{"order": 2, "id": "v2", "error": "gone too"}],
    }
    assert start(uri, plan) == {"v0", "v1", "v2"}
    with pytest.raises(DatasetError, match="an unfinished dataset of other videos or options is there"):
        start(uri, SingleWriterPlan(classes=["b"]))

    with np.load(second) as arrays:
        columns = {name: arrays[name] for name in arrays.files if name != "header"}
    write_with_header(second, {"shard": None, "errors": [{"id": "v2", "error": "gone too"}]}, columns)
    with pytest.raises(
        DatasetError,
        match=re.escape(
            f"{second}: not a shard manifest (header: errors[0].order: required field is missing); "
            "delete it to write its videos again"
        ),
    ):
        start(uri, plan)
    second.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DatasetError, match=re.escape(f"{second}: not a shard manifest (")):
        finish(uri, ["a"])
    second.unlink()
    (work / "plan.json").write_text('{"writer": "single"}')
    with pytest.raises(
        DatasetError,
        match=re.escape(
            f"{work / 'plan.json'}: not an ingest plan (plan: classes: required field is missing); "
            f"delete {work} to start over"
        ),
    ):
        start(uri, plan)
    (work / "plan.json").write_text("{")
    with pytest.raises(DatasetError, match=re.escape(f"{work / 'plan.json'}: not an ingest plan (")):
        start(uri, plan)
