"""Keys of what a run trains: a result is the same as an earlier one exactly when its key is.

A stage's key covers the model, the stage's recipe (every setting that changes what is trained), the
content of its data (the dataset fingerprint, whatever the dataset's name, URI or catalog version), the
evaluation settings and, for a fine-tune stage, where it starts: the key of the stage it starts from, or
the checkpoint file (its URI and recorded SHA-256). A branch's run key covers all its stages' keys: the
registry skips a branch whose run key it holds, and a run reuses a stage whose key an earlier run finished.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mega3d.trainer import storage
from mega3d.trainer.spec import PRETRAIN, SCRATCH, ExperimentSpec, FinetuneSpec, PretrainSpec

# How a stage runs, not what it trains: changing these trains the same model.
RUNS_ALIKE = {
    "num_workers",
    "max_retries",
    "cache_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "checkpoint_minutes",
}
# The data is keyed by content, and a fine-tune stage's start by the key of what it starts from.
KEYED_APART = {"datasets", "dataset", "init_from", "name"}
RESOURCES_THAT_TRAIN = ("nnodes", "nproc_per_node", "gpus")  # world size and device; not CPUs or memory


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


def recipe(stage: PretrainSpec | FinetuneSpec) -> dict[str, Any]:
    """The settings of a stage that change what it trains."""
    settings: dict[str, Any] = stage.model_dump(mode="json", exclude=RUNS_ALIKE | KEYED_APART)
    settings["resources"] = {name: settings["resources"][name] for name in RESOURCES_THAT_TRAIN}
    return settings


def _checkpoint(spec: ExperimentSpec, uri: str) -> dict[str, str]:
    """A checkpoint a stage starts from: its URI, and its SHA-256 where mega3d recorded one beside it."""
    where = spec.under_storage(uri)
    recorded = f"{where}.sha256"
    if not storage.exists(recorded):
        return {"uri": where}
    return {"uri": where, "sha256": storage.read_bytes(recorded).decode().split()[0]}


def stage_keys(
    spec: ExperimentSpec, pretrain_data: str | None, target_data: dict[str, str]
) -> dict[str, str]:
    """Each stage's key, from the fingerprints of the pretraining data (None without pretraining) and of
    each fine-tune target's dataset."""
    common = {
        "model": spec.model.model_dump(mode="json"),
        "evaluation": spec.evaluation.model_dump(mode="json"),
    }
    keys: dict[str, str] = {}
    if spec.pretrain is not None:
        keys[PRETRAIN] = digest({**common, "stage": recipe(spec.pretrain), "data": pretrain_data})
    for stage in spec.finetune:
        start: Any
        if stage.init_from in keys:
            start = {"stage": keys[stage.init_from]}
        elif stage.init_from == SCRATCH:
            start = SCRATCH
        else:
            start = _checkpoint(spec, stage.init_from)
        keys[stage.name] = digest(
            {**common, "stage": recipe(stage), "data": target_data[stage.name], "init": start}
        )
    return keys


def run_key(keys: dict[str, str]) -> str:
    """A branch's run key: what its registered model depends on, all its stages."""
    return digest(keys)
