"""Stage keys and run keys: equal exactly when the result would be the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mega3d.pipelines.keys import run_key, stage_keys
from mega3d.trainer.spec import ExperimentSpec, parse_spec

DATA = {"pretrain": "fingerprint-p", "ucf": "fingerprint-u", "hmdb": "fingerprint-h"}


def spec(tmp_path: Path, **changes: Any) -> ExperimentSpec:
    raw: dict[str, Any] = {
        "name": "keys",
        "storage": str(tmp_path),
        "datasets": {name: {"uri": f"datasets/{name}"} for name in ("kinetics", "ucf", "hmdb")},
        "model": {"name": "r3d-18"},
        "pretrain": {"datasets": ["kinetics"], "epochs": 3, "num_workers": 4},
        "finetune": [{"name": "ucf", "dataset": "ucf"}, {"name": "hmdb", "dataset": "hmdb"}],
    }
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = raw
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value
    return parse_spec(raw)


def keys_of(experiment: ExperimentSpec, data: dict[str, str] = DATA) -> dict[str, str]:
    return stage_keys(experiment, data["pretrain"], {"ucf": data["ucf"], "hmdb": data["hmdb"]})


def test_how_a_stage_runs_does_not_change_its_key(tmp_path: Path) -> None:
    base = keys_of(spec(tmp_path))
    for change in (
        {"pretrain__num_workers": 0},
        {"pretrain__max_retries": 3},
        {"pretrain__keep_checkpoints": 5},
        {"pretrain__resources": {"cpu": 16, "memory_gb": 64}},
        {"pretrain__cache_dir": "/mnt/ssd"},
        {"datasets": {"kinetics": {"uri": "elsewhere"}, "ucf": {"uri": "u"}, "hmdb": {"uri": "h"}}},
    ):
        assert keys_of(spec(tmp_path, **change)) == base, change


def test_what_a_stage_trains_changes_its_key_and_the_keys_after_it(tmp_path: Path) -> None:
    base = keys_of(spec(tmp_path))
    relearned = keys_of(spec(tmp_path, pretrain__optimizer={"lr": 0.1}))
    assert all(relearned[stage] != base[stage] for stage in base)  # the targets start from pretraining
    more_nodes = keys_of(spec(tmp_path, pretrain__resources={"nnodes": 2}))
    assert more_nodes["pretrain"] != base["pretrain"]  # the batch is per process: another recipe
    target = keys_of(spec(tmp_path, finetune__0__epochs=7))
    assert (target["pretrain"], target["hmdb"]) == (base["pretrain"], base["hmdb"])
    assert target["ucf"] != base["ucf"]
    deeper = keys_of(spec(tmp_path, model={"name": "r3d-50"}))
    assert all(deeper[stage] != base[stage] for stage in base)
    new_data = keys_of(spec(tmp_path), {**DATA, "hmdb": "fingerprint-h2"})
    assert [stage for stage in base if new_data[stage] != base[stage]] == ["hmdb"]
    assert run_key(new_data) != run_key(base) and run_key(keys_of(spec(tmp_path))) == run_key(base)


def test_a_stage_that_starts_from_a_checkpoint_is_keyed_by_its_recorded_digest(tmp_path: Path) -> None:
    checkpoint = tmp_path / "start.pt"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "start.pt.sha256").write_text("aaaa  start.pt\n")
    first = keys_of(spec(tmp_path, finetune__0__init_from=str(checkpoint)))
    (tmp_path / "start.pt.sha256").write_text("bbbb  start.pt\n")  # the file was replaced
    second = keys_of(spec(tmp_path, finetune__0__init_from=str(checkpoint)))
    assert first["ucf"] != second["ucf"] and first["hmdb"] == second["hmdb"]
