"""The model registry: which pretraining data each branch of an experiment has been trained on, and its
champion.

    <storage>/registry/<experiment>/<branch or main>/models/<fingerprint>.json   one record per trained model
                                                    champion.json                the current champion
                                                    history.json                 every decision, oldest first

A record holds the run, the checkpoints, and per fine-tune target its evaluation set (the target index's
fingerprint and split) and metrics. A challenger becomes champion only if it beats the champion on the same
evaluation sets: the score is the mean over targets of video top-1 (mAP for multi-label targets), and a
challenger whose targets were evaluated on other sets than the champion's is not promoted (it is recorded,
and the decision says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mega3d.trainer import layout, storage
from mega3d.trainer.spec import ExperimentSpec

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.json"


def record_uri(spec: ExperimentSpec, branch: str, fingerprint: str) -> str:
    return storage.join(layout.registry_dir(spec, branch), "models", f"{fingerprint}.json")


def trained_on(spec: ExperimentSpec, branch: str, fingerprint: str) -> dict[str, Any] | None:
    """The record of a model of this branch trained on data with this fingerprint, if there is one."""
    uri = record_uri(spec, branch, fingerprint)
    if not storage.exists(uri):
        return None
    record: dict[str, Any] = storage.read_json(uri)
    return record


def score(record: dict[str, Any]) -> float:
    values = [target["score"] for target in record["targets"].values()]
    return sum(values) / len(values)


def evaluation_sets(record: dict[str, Any]) -> dict[str, str]:
    return {name: target["evaluation_set"] for name, target in record["targets"].items()}


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    champion: dict[str, Any] | None  # before the decision


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None) -> Decision:
    if champion is None:
        return Decision(True, "no champion yet", None)
    if evaluation_sets(champion) != evaluation_sets(challenger):
        return Decision(
            False, "evaluated on other sets than the champion (fingerprints differ): not comparable", champion
        )
    new, old = score(challenger), score(champion)
    if new > old:
        return Decision(True, f"score {new:.4f} beats the champion's {old:.4f}", champion)
    return Decision(False, f"score {new:.4f} does not beat the champion's {old:.4f}", champion)


def register(spec: ExperimentSpec, branch: str, challenger: dict[str, Any], when: str) -> Decision:
    """Store the challenger's record, promote it if it wins, and append the decision to the history."""
    root = layout.registry_dir(spec, branch)
    storage.write_json(record_uri(spec, branch, challenger["fingerprint"]), challenger)
    champion_uri = storage.join(root, CHAMPION_FILE)
    champion = storage.read_json(champion_uri) if storage.exists(champion_uri) else None
    decision = decide(challenger, champion)
    if decision.promoted:
        storage.write_json(champion_uri, challenger)
    history_uri = storage.join(root, HISTORY_FILE)
    history = storage.read_json(history_uri) if storage.exists(history_uri) else []
    history.append(
        {
            "time": when,
            "run_id": challenger["run_id"],
            "fingerprint": challenger["fingerprint"],
            "score": score(challenger),
            "promoted": decision.promoted,
            "reason": decision.reason,
            "previous_champion": None if champion is None else champion["run_id"],
        }
    )
    storage.write_json(history_uri, history)
    return decision


def decision_markdown(challenger: dict[str, Any], decision: Decision) -> str:
    """The registry's decision as the Kubeflow UI shows it."""
    lines = [
        f"## {'Promoted to champion' if decision.promoted else 'Not promoted'}: {challenger['model']}",
        "",
        f"{decision.reason}. Trained on data {challenger['fingerprint']} in run {challenger['run_id']}.",
        "",
        "| target | score (challenger) | score (champion before) |",
        "|---|---:|---:|",
    ]
    before = decision.champion["targets"] if decision.champion else {}
    for name, target in challenger["targets"].items():
        old = before.get(name, {}).get("score")
        lines.append(f"| {name} | {target['score']:.4f} | {'' if old is None else f'{old:.4f}'} |")
    return "\n".join(lines) + "\n"
