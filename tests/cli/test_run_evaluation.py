"""A stage trained on CPUs (in one process or several) evaluated its final checkpoint on the evaluation
split already: the evaluation step keeps those scores instead of computing them again, and they are exactly
what an evaluation job of that checkpoint computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli.test_object_storage import TINY_STAGE
from tests.conftest import mega3d

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("processes", [1, 2])
def test_the_evaluation_step_keeps_what_an_evaluation_job_scores(tmp_path: Path, processes: int) -> None:
    synthetic = {"classes": 3, "videos_per_class": 8, "frames": 8, "size": 24, "seed": 1}
    spec = {
        "name": "kept",
        "storage": str(tmp_path / "store"),
        "datasets": {"motion": {"uri": "datasets/motion", "synthetic": synthetic}},
        "model": {"name": "r3d-10", "widen_factor": 0.125},
        "finetune": [
            {
                "name": "tuned",
                "dataset": "motion",
                "init_from": "scratch",
                **TINY_STAGE,
                "epochs": 3,
                "resources": {**TINY_STAGE["resources"], "nproc_per_node": processes},  # type: ignore[dict-item]
            }
        ],
    }
    (tmp_path / "kept.yaml").write_text(yaml.safe_dump(spec))
    result = mega3d("run", "kept.yaml", "--run-id", "r1", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "the training job evaluated" in result.stdout
    run = tmp_path / "store" / "experiments" / "kept" / "runs" / "r1"
    kept = json.loads((run / "tuned" / "evaluation" / "metrics.json").read_text())

    again = tmp_path / "evaluated-again"
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", str(processes),
        "-m", "mega3d.trainer", "evaluate", "--spec", str(run / "spec.json"), "--stage", "tuned",
        "--data-index", kept["job"]["data_index"], "--out", str(again),
        "--init", str(run / "tuned" / "checkpoint.pt"),
    ]  # fmt: skip
    evaluated = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    computed = json.loads((again / "metrics.json").read_text())
    assert kept["seconds"] == 0 and computed["seconds"] > 0
    for record in (kept, computed):
        del record["seconds"], record["ranks"], record["job"]["out_dir"]
    assert kept == computed
    per_video = (run / "tuned" / "evaluation" / "results.json").read_text()
    assert (again / "results.json").read_text() == per_video
