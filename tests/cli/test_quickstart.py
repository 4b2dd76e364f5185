"""The README's demo, end to end: `mega3d run examples/quickstart.yaml` (about a minute on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import QUICKSTART, mega3d

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("quickstart")
    result = mega3d("run", str(QUICKSTART), "--run-id", "e2e", cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return cwd / "runs" / "quickstart" / "experiments" / "quickstart" / "runs" / "e2e", result.stdout


def metrics(run: Path, *parts: str) -> dict:
    return json.loads(run.joinpath(*parts, "metrics.json").read_text())


def test_every_stage_reports_clip_and_video_accuracy(quickstart_run: tuple[Path, str]) -> None:
    run, stdout = quickstart_run
    for parts in (("pretrain",), ("motion-c",), ("motion-c", "evaluation")):
        result = metrics(run, *parts)
        for key in ("clip_accuracy", "video_top1", "video_top5"):
            assert 0.0 <= result[key] <= 1.0, (parts, key)
    assert (run / "pretrain" / "checkpoint.pt").exists() and (run / "motion-c" / "checkpoint.pt").exists()
    assert "pretrain" in stdout and "motion-c" in stdout and "video top-1" in stdout


def test_ddp_ran_on_two_processes(quickstart_run: tuple[Path, str]) -> None:
    run, _ = quickstart_run
    for stage in ("pretrain", "motion-c"):
        ranks = metrics(run, stage)["ranks"]  # what each rank reported about itself, gathered over gloo
        assert sorted(r["rank"] for r in ranks) == [0, 1]
        assert len({r["pid"] for r in ranks}) == 2
    assert (run / "pretrain" / "logs").is_dir()


def test_every_window_is_scored_once_across_ranks(quickstart_run: tuple[Path, str]) -> None:
    run, _ = quickstart_run
    evaluation = metrics(run, "motion-c", "evaluation")
    # 10 validation videos per class, 16 frames each, in non-overlapping 8-frame windows.
    assert evaluation["n_videos"] == 40 and evaluation["n_clips"] == 2 * 40


def test_finetuned_model_beats_chance_twice_over(quickstart_run: tuple[Path, str]) -> None:
    run, _ = quickstart_run
    evaluation = metrics(run, "motion-c", "evaluation")
    chance = 1 / len(evaluation["classes"])
    assert evaluation["video_top1"] >= 2 * chance, evaluation


def test_a_finished_run_is_never_overwritten(quickstart_run: tuple[Path, str]) -> None:
    run, _ = quickstart_run
    before = (run / "motion-c" / "evaluation" / "metrics.json").read_bytes()
    again = mega3d("run", str(QUICKSTART), "--run-id", "e2e", cwd=run.parents[5])
    assert again.returncode == 2 and "already exists" in again.stderr
    assert (run / "motion-c" / "evaluation" / "metrics.json").read_bytes() == before
