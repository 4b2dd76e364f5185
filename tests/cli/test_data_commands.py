"""`mega3d data merge | subset | stats`: new indexes over existing shards, and what a dataset holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mega3d.trainer.data.format import ClipReader, index_uri, load_index
from mega3d.trainer.data.ops import subset
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.spec import SyntheticSpec
from tests.conftest import mega3d


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
    assert [p.name for p in (root / "merged").iterdir()] == ["index.npz"]
    merged = load_index(index_uri(str(root / "merged")))
    assert merged.fingerprint in result.stdout
    assert merged.classes[6] == "moments/move-030.0deg-1.5px"
    assert [(s.name, s.label_offset, s.uri) for s in merged.sources] == [
        ("kinetics", 0, first),
        ("moments", 6, second),
    ]
    original = load_index(index_uri(second))
    video = merged.video(48)
    assert video.id == original.video(0).id and video.label == 6
    np.testing.assert_array_equal(ClipReader(merged).frames(48, 0, 6), ClipReader(original).frames(0, 0, 6))


def test_merge_refuses_clashes_and_existing_outputs(two_datasets: tuple[Path, str, str]) -> None:
    root, first, _ = two_datasets
    clash = mega3d("data", "merge", first, first, "-o", str(root / "twice"))
    assert clash.returncode == 2 and "two datasets are named 'kinetics'" in clash.stderr
    named = mega3d("data", "merge", first, first, "--name", "k1", "--name", "k2", "-o", str(root / "twice"))
    assert named.returncode == 2
    assert "video ids clash: 'move-000.0deg-1.5px-s1-0000' is in k1 and in k2" in named.stderr
    made = mega3d("data", "merge", first, "-o", str(root / "once"))
    assert made.returncode == 0, made.stderr
    again = mega3d("data", "merge", first, "-o", str(root / "once"))
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = mega3d("data", "merge", first, str(root / "nothing"), "-o", str(root / "never"))
    assert missing.returncode == 2 and "no dataset index" in missing.stderr
    scheme = mega3d("data", "merge", first, "nosuchscheme://x/y", "-o", str(root / "never"))
    assert scheme.returncode == 2 and "nosuchscheme" in scheme.stderr
    assert len(scheme.stderr.strip().splitlines()) == 1 and "Traceback" not in scheme.stderr
    assert not (root / "never").exists()
    assert not (root / "twice").exists()


def test_merge_can_fuse_classes_that_mean_the_same(two_datasets: tuple[Path, str, str]) -> None:
    root, first, second = two_datasets
    unify = root / "unify.yaml"
    unify.write_text(
        "moving east: [kinetics/move-000.0deg-1.5px, moments/move-030.0deg-1.5px]\n"
        "moving north-west: [moments/move-150.0deg-1.5px]\n"
    )
    result = mega3d("data", "merge", first, second, "--unify", str(unify), "-o", str(root / "fused"))
    assert result.returncode == 0, result.stderr
    assert "8 classes (kinetics 6 + moments 3, 3 fused), 60 videos" in result.stdout
    fused = load_index(index_uri(str(root / "fused")))
    assert fused.classes[0] == "moving east" and fused.classes[6] == "moving north-west"
    labels = fused.single_labels()
    assert (labels == 0).sum() == 8 + 4 and len(fused.classes) == 8
    assert fused.sources[-1].unify["moving east"][1] == "moments/move-030.0deg-1.5px"

    unify.write_text("x: [moments/no-such-class]\n")
    bad = mega3d("data", "merge", first, second, "--unify", str(unify), "-o", str(root / "never"))
    assert (
        bad.returncode == 2
        and f"{unify}: x: 'moments/no-such-class' is not a class of the merge" in bad.stderr
    )
    assert not (root / "never").exists()


def test_subsets_follow_the_papers_data_amount_study(two_datasets: tuple[Path, str, str]) -> None:
    _, first, _ = two_datasets
    index = load_index(index_uri(first))  # 6 classes x (6 training + 2 validation) videos
    part = subset(index, categories=0.5, instances=0.5, seed=4)
    assert len(part.classes) == 3 and set(part.classes) <= set(index.classes)
    assert len(part.rows("training")) == 3 * 3 and len(part.rows("validation")) == 3 * 2
    assert set(part.single_labels().tolist()) == {0, 1, 2}
    kept = part.sources[-1].labels
    by_id = {video.id: video for video in index.videos()}
    for video in part.videos():  # the same video, its label renamed
        assert (
            part.classes[video.label]
            == index.classes[kept[video.label]]
            == index.classes[by_id[video.id].label]
        )
    assert subset(index, 0.5, 0.5, seed=4).fingerprint == part.fingerprint
    assert subset(index, 0.5, 0.5, seed=5).fingerprint != part.fingerprint
    assert len(subset(index, 1.0, 0.01, seed=0).rows("training")) == 6  # at least one per category


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
    assert f"fingerprint {load_index(index_uri(str(root / 'half'))).fingerprint}" in stats.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
