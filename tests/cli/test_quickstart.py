"""The README's demo, end to end: `mega3d run examples/quickstart.yaml` (about a minute on 2 cores).

It runs as a Kubeflow user would start it: from a repository of their own that holds packages named like
mega3d's parts (`trainer`, `pipelines`, `components`, `cli`). Each of those fails loudly on import, so a step
or a training process that imported one instead of `mega3d.*` fails the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import QUICKSTART, mega3d

pytestmark = pytest.mark.slow


USERS_PACKAGES = ("trainer", "pipelines", "components", "cli")


def with_users_packages(directory: Path) -> Path:
    for name in USERS_PACKAGES:
        (directory / name).mkdir()
        (directory / name / "__init__.py").write_text(
            f"raise ImportError('the user\\'s own {name} package')\n"
        )
    return directory


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    cwd = with_users_packages(tmp_path_factory.mktemp("quickstart"))
    result = mega3d("run", str(QUICKSTART), "--run-id", "e2e", cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return cwd / "runs" / "quickstart" / "experiments" / "quickstart" / "runs" / "e2e", result.stdout


def metrics(run: Path, *parts: str) -> dict:
    return json.loads(run.joinpath(*parts, "metrics.json").read_text())


def test_validate_and_compile_work_beside_the_users_own_packages(quickstart_run: tuple[Path, str]) -> None:
    cwd = quickstart_run[0].parents[5]
    assert all((cwd / name / "__init__.py").exists() for name in USERS_PACKAGES)
    validated = mega3d("validate", str(QUICKSTART), cwd=cwd)
    assert validated.returncode == 0 and validated.stdout.startswith("ok quickstart"), validated.stderr
    compiled = mega3d("compile", str(QUICKSTART), "-o", "pipeline.yaml", cwd=cwd)
    assert compiled.returncode == 0, compiled.stderr
    assert "from mega3d.pipelines import tasks" in (cwd / "pipeline.yaml").read_text()


def test_every_stage_reports_clip_and_video_accuracy(quickstart_run: tuple[Path, str]) -> None:
    run, stdout = quickstart_run
    for parts in (("pretrain",), ("motion-c",), ("motion-c", "evaluation")):
        result = metrics(run, *parts)
        for key in ("clip_accuracy", "video_top1", "video_top5"):
            assert 0.0 <= result[key] <= 1.0, (parts, key)
    assert (run / "pretrain" / "checkpoint.pt").exists() and (run / "motion-c" / "checkpoint.pt").exists()
    assert "pretrain" in stdout and "motion-c" in stdout and "video top-1" in stdout


def test_the_demo_shows_each_step_its_progress_and_its_result_and_logs_the_rest(
    quickstart_run: tuple[Path, str],
) -> None:
    run, stdout = quickstart_run
    for noise in ("\x1b[", "KFP Executor", "Warning", "metadata=", "Traceback", "Streamed logs"):
        assert noise not in stdout, noise
    lines = stdout.splitlines()
    for step in ("prepare-run", "prepare-branch", "pretrain", "prepare-target", "finetune", "evaluate"):
        assert f"{step}: started" in lines and any(line.startswith(f"{step}: done in ") for line in lines)
    assert any("[motion-c] epoch 12/12" in line for line in lines) and len(lines) < 120
    log = (run / "run.log").read_text()
    assert "KFP Executor" in log and "Task 'evaluate' outputs:" in log and "\x1b[" not in log


def test_the_evaluate_step_keeps_the_scores_of_the_two_rank_training_job(
    quickstart_run: tuple[Path, str],
) -> None:
    """Its ranks scored with rank 0's BatchNorm statistics, the checkpoint's, so the training job's
    evaluation is an evaluation job's (tests/cli/test_run_evaluation.py compares the two)."""
    run, stdout = quickstart_run
    evaluation = metrics(run, "motion-c", "evaluation")
    assert "the training job evaluated" in stdout and evaluation["seconds"] == 0
    assert evaluation["world_size"] == 2 and evaluation["job"]["init_checkpoint"] == evaluation["checkpoint"]


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


def test_a_published_checkpoint_is_finetuned_without_pretraining(tmp_path: Path) -> None:
    """The reference implementation's .pth layout (DataParallel prefixes, its arch string) goes straight
    into a fine-tune stage: `init_from` names the file and no pretraining runs."""
    import torch

    from mega3d.trainer.models import build_model

    data = yaml.safe_load(QUICKSTART.read_text())
    del data["pretrain"]
    stage = data["finetune"][0]
    stage.update(init_from="published/r3d10_KM_200ep.pth", epochs=2)
    spec = tmp_path / "published.yaml"
    spec.write_text(yaml.safe_dump(data))

    missing = mega3d("run", str(spec), cwd=tmp_path)
    assert missing.returncode == 2 and "finetune[0].init_from: no checkpoint at" in missing.stderr

    published = build_model("r3d-10", 1039, widen_factor=0.25)
    path = tmp_path / "runs" / "quickstart" / "published" / "r3d10_KM_200ep.pth"
    path.parent.mkdir(parents=True)
    torch.save(
        {
            "epoch": 200,
            "arch": "resnet-10",
            "state_dict": {f"module.{k}": v for k, v in published.state_dict().items()},
        },
        path,
    )
    result = mega3d("run", str(spec), "--run-id", "published", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = path.parents[1] / "experiments" / "quickstart" / "runs" / "published"
    assert not (run / "pretrain").exists()
    assert metrics(run, "motion-c", "evaluation")["n_videos"] == 40
