"""The model registry: a model whose scores are not finite numbers is neither registered nor promoted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from mega3d.pipelines import registry
from mega3d.trainer import layout
from mega3d.trainer.records import ModelRecord, RecordError, TargetResult
from mega3d.trainer.spec import ExperimentSpec, parse_spec
from tests.conftest import QUICKSTART

NAN, INF = float("nan"), float("inf")


def experiment(storage: Path) -> ExperimentSpec:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["storage"] = str(storage)
    return parse_spec(data)


def model(run_id: str, score: float, clip_accuracy: float = 0.5) -> ModelRecord:
    target = TargetResult(
        evaluation_set="abc:validation",
        score=score,
        checkpoint=f"runs/{run_id}/motion-c/checkpoint.pt",
        clip_accuracy=clip_accuracy,
        video_top1=score,
        video_top5=1.0,
    )
    return ModelRecord(
        run_id=run_id, branch="", fingerprint=run_id, model="r3d-10", targets={"motion-c": target}
    )


def files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()
    }


# (the challenger's score, its clip accuracy, the one line)
NOT_FINITE = {
    "a NaN score": (NAN, 0.5, "motion-c.score = nan, motion-c.video_top1 = nan"),
    "an infinite clip accuracy": (0.5, INF, "motion-c.clip_accuracy = inf"),
}


@pytest.mark.parametrize("case", sorted(NOT_FINITE))
def test_a_model_whose_scores_are_not_finite_is_refused_and_nothing_is_written(
    case: str, tmp_path: Path
) -> None:
    score, clip_accuracy, broken = NOT_FINITE[case]
    spec = experiment(tmp_path)
    registry.register(spec, "", model("first", 0.6), "2026-12-03T10:00:00Z")
    before = files(tmp_path)
    with pytest.raises(RecordError) as raised:
        registry.register(spec, "", model("diverged", score, clip_accuracy), "2026-12-03T11:00:00Z")
    assert str(raised.value) == (
        f"r3d-10 of run diverged: scores are not finite ({broken}): a diverged model is not registered"
    )
    assert files(tmp_path) == before  # no record, the champion and the history as they were
    for text in before.values():
        json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} in a registry file"))


def test_decide_never_promotes_a_model_that_is_not_finite() -> None:
    decision = registry.decide(model("diverged", NAN), None)
    assert not decision.promoted and decision.reason.startswith("scores are not finite (motion-c.score = nan")


def test_a_champion_that_is_not_finite_gives_way(tmp_path: Path) -> None:
    """A champion registered before scores were checked: NaN compares false, so nothing else could beat it."""
    spec = experiment(tmp_path)
    root = Path(layout.registry_dir(spec, ""))
    model("old", NAN).write(str(root / registry.CHAMPION_FILE))
    decision = registry.register(spec, "", model("new", 0.4), "2026-12-03T12:00:00Z")
    assert decision.promoted and decision.reason == "the champion's scores are not finite"
    champion = ModelRecord.read(str(root / registry.CHAMPION_FILE))
    assert champion.run_id == "new" and math.isfinite(champion.score)
