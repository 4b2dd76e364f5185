"""The full graph on kfp.local: a sweep of two branches, fine-tune targets in a ParallelFor, the model
registry's champion, and the skip branch of scheduled retraining (an unchanged merge trains nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from mega3d.pipelines.pipeline import compile_pipeline
from mega3d.pipelines.registry import Decision, decide
from mega3d.pipelines.settings import Deployment
from mega3d.trainer.records import ModelRecord, TargetResult
from mega3d.trainer.spec import SpecError, parse_spec
from tests.conftest import QUICKSTART, mega3d

pytestmark = pytest.mark.slow


def tiny_sweep_spec(tmp_path: Path) -> dict[str, Any]:
    """The quickstart at a fraction of its size, swept over two category fractions of the merge."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["storage"] = str(tmp_path / "store")
    for dataset in data["datasets"].values():
        dataset["synthetic"].update(videos_per_class=8, frames=8, size=24)
    for stage in [data["pretrain"], *data["finetune"]]:
        stage.update(epochs=1, batch_size=4)
        stage["resources"].update(nnodes=1)
    data["finetune"].append({**data["finetune"][0], "name": "motion-a-ft", "dataset": "motion-a"})
    data["sweep"] = {"category_fraction": [0.5, 1.0]}
    return data


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    tmp_path = tmp_path_factory.mktemp("sweep")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep_spec(tmp_path)))
    outputs = []
    for run_id, extra in (("first", []), ("again", ["--skip-if-trained"]), ("third", [])):
        result = mega3d("run", str(spec), "--run-id", run_id, *extra, timeout=900)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        outputs.append(result.stdout)
    return tmp_path / "store", spec, outputs


def branch_dir(store: Path, run_id: str, branch: str) -> Path:
    return store / "experiments" / "quickstart" / "runs" / run_id / "branches" / branch


def test_each_branch_trains_and_evaluates_every_target(swept: tuple[Path, Path, list[str]]) -> None:
    store, _, outputs = swept
    for branch, classes in (("c50", 4), ("c100", 8)):
        root = branch_dir(store, "first", branch)
        assert json.loads((root / "pretrain" / "metrics.json").read_text())["classes"].__len__() == classes
        for target in ("motion-c", "motion-a-ft"):
            evaluation = json.loads((root / target / "evaluation" / "metrics.json").read_text())
            assert 0 <= evaluation["video_top1"] <= 1 and len(evaluation["confusion"]) == 4
    assert "c50" in outputs[0] and "c100" in outputs[0]  # the results table has a row per branch


def test_the_first_model_of_a_branch_becomes_champion(swept: tuple[Path, Path, list[str]]) -> None:
    store, _, _ = swept
    for branch in ("c50", "c100"):
        registry = store / "registry" / "quickstart" / branch
        champion = json.loads((registry / "champion.json").read_text())
        assert champion["run_id"] == "first" and set(champion["targets"]) == {"motion-c", "motion-a-ft"}
        assert (registry / "models" / f"{champion['run_key']}.json").exists()


def test_unchanged_data_trains_nothing_when_scheduled(swept: tuple[Path, Path, list[str]]) -> None:
    store, _, outputs = swept
    for branch in ("c50", "c100"):
        assert not (branch_dir(store, "again", branch) / "pretrain").exists()
    assert outputs[1].count("already holds a model trained with the same data") == 2
    assert "(run first, run key" in outputs[1]


def test_a_model_that_does_not_beat_the_champion_is_recorded_not_promoted(
    swept: tuple[Path, Path, list[str]],
) -> None:
    """The third run trains the same data with the same seed: the same score, which does not beat it."""
    store, _, _ = swept
    registry = store / "registry" / "quickstart" / "c100"
    history = json.loads((registry / "history.json").read_text())
    assert [(h["run_id"], h["promoted"]) for h in history] == [("first", True), ("third", False)]
    assert "does not beat the champion" in history[1]["reason"]
    assert json.loads((registry / "champion.json").read_text())["run_id"] == "first"


def test_a_branch_without_pretraining_trains_its_targets_from_scratch(tmp_path: Path) -> None:
    data = tiny_sweep_spec(tmp_path)
    data["finetune"] = data["finetune"][:1]
    data["sweep"] = {"pretrain_datasets": [[], ["motion-a"]]}
    (tmp_path / "scratch.yaml").write_text(yaml.safe_dump(data))
    result = mega3d("run", str(tmp_path / "scratch.yaml"), "--run-id", "s", timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    scratch, pretrained = (branch_dir(tmp_path / "store", "s", name) for name in ("scratch", "motion-a"))
    assert not (scratch / "pretrain").exists() and (pretrained / "pretrain" / "checkpoint.pt").exists()
    for root in (scratch, pretrained):
        assert json.loads((root / "motion-c" / "evaluation" / "metrics.json").read_text())["n_videos"] > 0
    assert json.loads((scratch / "spec.json").read_text())["finetune"][0]["init_from"] == "scratch"
    trained = json.loads((scratch / "motion-c" / "metrics.json").read_text())
    assert trained["job"]["init_checkpoint"] is None and trained["job"]["spec"]["train_from"] is None
    # Scheduled again with nothing changed: the branch without pretraining is skipped too.
    again = mega3d("run", str(tmp_path / "scratch.yaml"), "--run-id", "s2", "--skip-if-trained", timeout=900)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert again.stdout.count("already holds a model trained with the same data") == 2
    assert not (branch_dir(tmp_path / "store", "s2", "scratch") / "motion-c").exists()


def record(score: float, evaluation_set: str = "abc:validation") -> ModelRecord:
    target = TargetResult(
        evaluation_set=evaluation_set,
        score=score,
        checkpoint="ucf101/checkpoint.pt",
        clip_accuracy=score,
        video_top1=score,
        video_top5=1.0,
    )
    return ModelRecord(run_id="r", branch="", fingerprint="f", model="r3d-18", targets={"ucf101": target})


def test_promotion_needs_a_better_score_on_the_same_evaluation_sets() -> None:
    assert decide(record(0.5), None) == Decision(True, "no champion yet", None)
    assert decide(record(0.6), record(0.5)).promoted
    assert not decide(record(0.5), record(0.5)).promoted
    different = decide(record(0.9, "other:validation"), record(0.5))
    assert not different.promoted and "not comparable" in different.reason


def test_the_sweep_compiles_into_nested_parallel_fors(tmp_path: Path) -> None:
    spec = parse_spec(tiny_sweep_spec(tmp_path))
    path = tmp_path / "sweep.yaml"
    compile_pipeline(spec, str(path), Deployment(sweep_parallelism=1))
    ir = json_format.ParseDict(next(yaml.safe_load_all(path.read_text())), pipeline_spec_pb2.PipelineSpec())
    sweep = ir.root.dag.tasks["for-loop-2"]
    assert sweep.parameter_iterator.items.raw == json.dumps(["c50", "c100"])
    assert sweep.iterator_policy.parallelism_limit == 1  # one branch (and its jobs) at a time
    loop = ir.components[sweep.component_ref.name].dag
    branches = next(task for name, task in loop.tasks.items() if name.startswith("condition-branches"))
    conditions = ir.components[branches.component_ref.name].dag.tasks.values()
    train_when = "inputs.parameter_values['pipelinechannel--prepare-branch-Output'] == 'pretrain'"
    policies = sorted(task.trigger_policy.condition for task in conditions)
    assert policies == [f"!({train_when})", train_when]  # If and Else
    trained = next(task for task in conditions if "!(" not in task.trigger_policy.condition)
    body = ir.components[trained.component_ref.name].dag
    targets = next(task for name, task in body.tasks.items() if name.startswith("for-loop"))
    assert targets.parameter_iterator.items.raw == json.dumps(["motion-c", "motion-a-ft"])
    assert not targets.HasField("iterator_policy")  # a branch's targets all run side by side
    assert {"pretrain", "register"} <= set(body.tasks)


def test_a_sweep_past_the_configured_maximum_is_refused(tmp_path: Path) -> None:
    data = tiny_sweep_spec(tmp_path)
    data["sweep"] = {"category_fraction": [0.1, 0.3, 0.5], "instance_fraction": [0.5, 1.0]}
    with pytest.raises(SpecError, match=r"sweep: expands to 6 branches, more than max_branches 4"):
        compile_pipeline(parse_spec(data), str(tmp_path / "p.yaml"), Deployment(max_branches=4))
    assert not (tmp_path / "p.yaml").exists()
