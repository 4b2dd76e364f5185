"""`mega3d data merge | subset | stats`: new indexes over existing shards, and what a dataset holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import mega3d
from trainer.data.format import index_uri, load_index, read_frames
from trainer.data.ops import subset
from trainer.data.synth import synthesize
from trainer.spec import SyntheticSpec


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("datasets")
    first, second = str(root / "kinetics"), str(root / "moments")
    synthesize(first, SyntheticSpec(classes=6, videos_per_class=8, frames=6, size=16, seed=1))
    synthesize(second, SyntheticSpec(classes=3, videos_per_class=4, frames=6, size=16, rotation=30, seed=2))
    return root, first, second


def test_merge_concatenates_label_spaces_without_copying(two_datasets: tuple[Path, str, str]) -> None:
    root, first, second = two_datasets
    result = mega3d("data", "merge", first, second, "-o", str(root / "merged"))
    assert result.returncode == 0, result.stderr
    assert "9 classes (kinetics 6 + moments 3), 60 videos" in result.stdout
    assert [p.name for p in (root / "merged").iterdir()] == ["index.json"]
    merged = load_index(index_uri(str(root / "merged")))
    assert merged.classes[6] == "moments/move-030.0deg-1.5px"
    assert [(s["name"], s["label_offset"], s["uri"]) for s in merged.sources] == [
        ("kinetics", 0, first),
        ("moments", 6, second),
    ]
    original = load_index(index_uri(second))
    video = merged.videos[48]
    assert video.id == f"moments/{original.videos[0].id}" and video.label == 6
    np.testing.assert_array_equal(
        read_frames(merged, video, 0, 6), read_frames(original, original.videos[0], 0, 6)
    )


def test_merge_refuses_clashing_names_and_existing_outputs(two_datasets: tuple[Path, str, str]) -> None:
    root, first, _ = two_datasets
    clash = mega3d("data", "merge", first, first, "-o", str(root / "twice"))
    assert clash.returncode == 2 and "two datasets are named 'kinetics': pass --name" in clash.stderr
    named = mega3d("data", "merge", first, first, "--name", "k1", "--name", "k2", "-o", str(root / "twice"))
    assert named.returncode == 0 and "12 classes" in named.stdout
    again = mega3d("data", "merge", first, first, "--name", "x", "--name", "y", "-o", str(root / "twice"))
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = mega3d("data", "merge", first, str(root / "nothing"), "-o", str(root / "never"))
    assert missing.returncode == 2 and "no dataset index" in missing.stderr
    assert not (root / "never").exists()


def test_subsets_follow_the_papers_data_amount_study(two_datasets: tuple[Path, str, str]) -> None:
    _, first, _ = two_datasets
    index = load_index(index_uri(first))  # 6 classes x (6 training + 2 validation) videos
    part = subset(index, categories=0.5, instances=0.5, seed=4)
    assert len(part.classes) == 3 and set(part.classes) <= set(index.classes)
    assert len(part.subset("training")) == 3 * 3 and len(part.subset("validation")) == 3 * 2
    assert {v.label for v in part.videos} == {0, 1, 2}
    kept = part.sources[-1]["labels"]
    assert all(part.classes[v.label] == index.classes[kept[v.label]] for v in part.videos)
    assert subset(index, 0.5, 0.5, seed=4) == part
    assert subset(index, 0.5, 0.5, seed=5) != part
    assert len(subset(index, 1.0, 0.01, seed=0).subset("training")) == 6  # at least one per category


def test_subset_and_stats_commands(two_datasets: tuple[Path, str, str]) -> None:
    root, first, _ = two_datasets
    made = mega3d("data", "subset", first, "--categories", "0.5", "--seed", "1", "-o", str(root / "half"))
    assert made.returncode == 0 and "3 classes, 18 training videos" in made.stdout
    bad = mega3d("data", "subset", first, "--categories", "1.5", "-o", str(root / "never"))
    assert bad.returncode == 2 and "--categories must be a fraction in (0, 1]" in bad.stderr

    plot = root / "classes.png"
    stats = mega3d("data", "stats", str(root / "half"), "--plot", str(plot))
    assert stats.returncode == 0, stats.stderr
    assert "3 classes, 24 videos (18 training, 6 validation)" in stats.stdout
    assert "144 frames, 0.1 minutes" in stats.stdout and "smallest classes (training videos)" in stats.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
