"""The model registry: what each branch of an experiment has trained (by run key), its champion, and the
stages runs have trained (by stage key).

    <storage>/registry/<experiment>/<branch or main>/models/<run key>.json   one record per trained model
                                                    champion.json            the current champion
                                                    history.json             every decision, oldest first
                                                    stages/<stage key>.json  where a stage trained, and
                                                                             whether it finished

A record holds the run, the checkpoints, and per fine-tune target its evaluation set (the target index's
fingerprint and split) and metrics. A challenger becomes champion only if it beats the champion on the same
evaluation sets: the score is the mean over targets of video top-1 (mAP for multi-label targets), and a
challenger whose targets were evaluated on other sets than the champion's is not promoted (it is recorded,
and the decision says why). A model with a score that is not a finite number (a diverged training) is
neither registered nor promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from mega3d.trainer import layout, storage
from mega3d.trainer.records import ModelRecord, RecordError, RegistryDecision, StageRecord
from mega3d.trainer.spec import ExperimentSpec

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.json"
_HISTORY = TypeAdapter(list[RegistryDecision])


def record_uri(spec: ExperimentSpec, branch: str, run_key: str) -> str:
    return storage.join(layout.registry_dir(spec, branch), "models", f"{run_key}.json")


def trained_with(spec: ExperimentSpec, branch: str, run_key: str) -> ModelRecord | None:
    """The record of the model this branch trained with this run key, if there is one."""
    uri = record_uri(spec, branch, run_key)
    return ModelRecord.read(uri) if storage.exists(uri) else None


def stage_uri(spec: ExperimentSpec, branch: str, key: str) -> str:
    return storage.join(layout.registry_dir(spec, branch), "stages", f"{key}.json")


def stage_with(spec: ExperimentSpec, branch: str, key: str) -> StageRecord | None:
    """Where a stage with this key trained (or trains), if any run has started one."""
    uri = stage_uri(spec, branch, key)
    return StageRecord.read(uri) if storage.exists(uri) else None


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    champion: ModelRecord | None  # before the decision


def non_finite(record: ModelRecord) -> list[str]:
    """`target.field = value` for each of the record's scores that is not a finite number."""
    return [
        f"{name}.{field} = {value}"
        for name, target in record.targets.items()
        for field, value in target.model_dump().items()
        if isinstance(value, float) and not math.isfinite(value)
    ]


def decide(challenger: ModelRecord, champion: ModelRecord | None) -> Decision:
    broken = non_finite(challenger)
    if broken:  # NaN compares false with everything: such a model must not win by accident
        return Decision(False, f"scores are not finite ({', '.join(broken)})", champion)
    if champion is None:
        return Decision(True, "no champion yet", None)
    if non_finite(champion):  # a champion from before scores were checked can never be beaten otherwise
        return Decision(True, "the champion's scores are not finite", champion)
    if champion.evaluation_sets != challenger.evaluation_sets:
        return Decision(
            False, "evaluated on other sets than the champion (fingerprints differ): not comparable", champion
        )
    new, old = challenger.score, champion.score
    if new > old:
        return Decision(True, f"score {new:.4f} beats the champion's {old:.4f}", champion)
    return Decision(False, f"score {new:.4f} does not beat the champion's {old:.4f}", champion)


def read_history(uri: str) -> list[RegistryDecision]:
    """Every decision so far, oldest first; none before the first."""
    if not storage.exists(uri):
        return []
    try:
        return _HISTORY.validate_python(storage.read_json(uri))
    except ValidationError as error:
        raise RecordError(
            f"{uri}: not a list of registry decisions ({error.error_count()} problems)"
        ) from None


def register(spec: ExperimentSpec, branch: str, challenger: ModelRecord, when: str) -> Decision:
    """Store the challenger's record, promote it if it wins, and append the decision to the history.
    RecordError, with nothing written, for a challenger whose scores are not finite numbers."""
    broken = non_finite(challenger)
    if broken:
        raise RecordError(
            f"{challenger.model} of run {challenger.run_id}: scores are not finite ({', '.join(broken)}): "
            "a diverged model is not registered"
        )
    root = layout.registry_dir(spec, branch)
    # The first model trained with a run key keeps its record: a later one trained alike is in the history
    # (and in champion.json, if it wins).
    storage.create_new(record_uri(spec, branch, challenger.key), storage.json_bytes(challenger.to_json()))
    champion_uri = storage.join(root, CHAMPION_FILE)
    champion = ModelRecord.read(champion_uri) if storage.exists(champion_uri) else None
    decision = decide(challenger, champion)
    if decision.promoted:
        challenger.write(champion_uri)
    history_uri = storage.join(root, HISTORY_FILE)
    entry = RegistryDecision(
        time=when,
        run_id=challenger.run_id,
        fingerprint=challenger.fingerprint,
        score=challenger.score,
        promoted=decision.promoted,
        reason=decision.reason,
        previous_champion=None if champion is None else champion.run_id,
    )
    history = [*read_history(history_uri), entry]
    storage.write_json(history_uri, [item.to_json() for item in history])
    return decision


def decision_markdown(challenger: ModelRecord, decision: Decision) -> str:
    """The registry's decision as the Kubeflow UI shows it."""
    lines = [
        f"## {'Promoted to champion' if decision.promoted else 'Not promoted'}: {challenger.model}",
        "",
        f"{decision.reason}. Trained on data {challenger.fingerprint} in run {challenger.run_id}.",
        "",
        "| target | score (challenger) | score (champion before) |",
        "|---|---:|---:|",
    ]
    before = decision.champion.targets if decision.champion else {}
    for name, target in challenger.targets.items():
        old = before[name].score if name in before else None
        lines.append(f"| {name} | {target.score:.4f} | {'' if old is None else f'{old:.4f}'} |")
    return "\n".join(lines) + "\n"
