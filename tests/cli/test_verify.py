"""`mega3d data verify` and `mega3d data stats` over damaged datasets: exit code 2 and one line per
problem, naming the file (and the video and shard), and nothing on disk changed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mega3d.trainer import storage
from mega3d.trainer.data.format import dataset_problems, index_uri, load_index, save_index
from tests.conftest import mega3d
from tests.trainer.data.test_integrity import flip_byte_inside, six_videos


def files(root: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(root.iterdir())}


def shard(root: Path, number: int) -> Path:
    return Path(load_index(index_uri(str(root))).shards[number])


def flipped_v1(root: Path) -> list[str]:
    flip_byte_inside(root, 1)
    return [f"video 'v1' in {shard(root, 0)}: digest mismatch"]


def short_second_shard(root: Path) -> list[str]:
    path = shard(root, 1)
    path.write_bytes(path.read_bytes()[:-100])
    ends = load_index(index_uri(str(root))).columns
    end = int(ends["offset"][3] + ends["length"][3])
    return [f"video 'v3' in {path}: short shard ({end - 100:,} bytes; the video ends at {end:,})"]


def missing_third_shard(root: Path) -> list[str]:
    path = shard(root, 2)
    path.unlink()
    return [f"video 'v4' in {path}: missing shard", f"video 'v5' in {path}: missing shard"]


@pytest.mark.parametrize("damage", [flipped_v1, short_second_shard, missing_third_shard])
def test_verify_names_every_bad_video(tmp_path: Path, damage: Callable[[Path], list[str]]) -> None:
    root = six_videos(tmp_path / "ds")
    uri = str(root)
    ok = mega3d("data", "verify", uri)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert ok.stdout.startswith(f"{uri}: all 6 videos match their digests (") and ok.stdout.count("\n") == 1
    problems = damage(root)
    before = files(root)
    result = mega3d("data", "verify", uri, "--workers", "2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {uri}: {problem}" for problem in problems] + [
        f"error: {uri}: {len(problems)} of 6 videos do not match the index"
    ]
    assert result.stdout == ""
    assert files(root) == before


def truncated_index(root: Path) -> str:
    path = root / "index.npz"
    path.write_bytes(path.read_bytes()[:-200])
    return f"{path}: not a mega3d dataset index (BadZipFile: "


def label_out_of_range(root: Path) -> str:
    index = load_index(index_uri(str(root)))
    index.columns["label"] = np.where(np.arange(len(index)) == 4, 9, index.columns["label"]).astype(np.int32)
    save_index(index_uri(str(root)), index)
    return f"{root / 'index.npz'}: column 'label': video 'v4' has a label outside the 2 classes"


def no_index(root: Path) -> str:
    (root / "index.npz").unlink()
    return f"{root / 'index.npz'}: no dataset index ("


@pytest.mark.parametrize("command", ["verify", "stats"])
@pytest.mark.parametrize("damage", [truncated_index, label_out_of_range, no_index])
def test_a_damaged_index_is_one_line(tmp_path: Path, command: str, damage: Callable[[Path], str]) -> None:
    root = six_videos(tmp_path / "ds")
    line = damage(root)
    before = files(root)
    result = mega3d("data", command, str(root))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {line}") and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert files(root) == before


def test_verify_reads_a_bucket(gcs_bucket: str) -> None:
    uri = f"{gcs_bucket}/datasets/verified"
    made = mega3d("data", "synth", uri, "--classes", "2", "--videos-per-class", "3", "--size", "16")
    assert made.returncode == 0, made.stderr
    assert mega3d("data", "verify", uri).stdout.startswith(f"{uri}: all 6 videos match their digests (")
    index = load_index(index_uri(uri))
    (shard_uri,) = index.shards
    storage.write_bytes(shard_uri, storage.read_bytes(shard_uri)[:-1])
    last = index.video(int(np.argmax(index.columns["offset"])))
    end = last.offset + last.length
    result = mega3d("data", "verify", uri)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {uri}: video {last.id!r} in {shard_uri}: "
        f"short shard ({end - 1:,} bytes; the video ends at {end:,})"
    )
    assert dataset_problems(uri) == [
        f"{shard_uri}: short shard (shorter than the {end:,} bytes the index places in it)"
    ]


@pytest.mark.parametrize("damage", [short_second_shard, missing_third_shard])
def test_stats_refuses_a_dataset_whose_shards_are_not_whole(
    tmp_path: Path, damage: Callable[[Path], list[str]]
) -> None:
    root = six_videos(tmp_path / "ds")
    damage(root)
    before = files(root)
    result = mega3d("data", "stats", str(root))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {root}: ") and (" short shard (" in line or " missing shard (" in line)
    assert files(root) == before
