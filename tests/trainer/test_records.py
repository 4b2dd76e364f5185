"""The typed records that cross process boundaries: what they refuse, and that they round-trip."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mega3d.trainer import storage
from mega3d.trainer.records import (
    BranchPointer,
    ModelRecord,
    RecordError,
    Scores,
    TargetResult,
)


def test_a_score_that_is_a_flag_or_text_is_refused_with_file_and_field() -> None:
    with pytest.raises(RecordError, match=r"^m\.json: video_top1: .*a score must be a number, not true"):
        Scores.parse({"video_top1": True}, "m.json")
    with pytest.raises(RecordError, match=r"^m\.json: per_class_accuracy\.walk: "):
        Scores.parse({"per_class_accuracy": {"walk": "high"}}, "m.json")


def test_a_file_that_is_not_json_is_named() -> None:
    uri = "memory://records-test/broken.json"
    storage.write_bytes(uri, b"{not json")
    try:
        with pytest.raises(RecordError, match=f"^{uri}: not JSON"):
            Scores.read(uri)
    finally:
        storage.remove(uri)


def test_the_headline_is_map_for_multi_label_scores_else_video_top1() -> None:
    single = Scores(video_top1=0.7, per_class_accuracy={"a": 0.5}, per_class_ap={"a": 0.9})
    multi = Scores(video_top1=0.7, mAP=0.4, per_class_accuracy={"a": 0.5}, per_class_ap={"a": 0.9})
    assert (single.headline, single.per_class, single.per_class_measure) == (
        0.7,
        {"a": 0.5},
        "video top-1 accuracy",
    )
    assert (multi.headline, multi.per_class, multi.per_class_measure) == (
        0.4,
        {"a": 0.9},
        "average precision",
    )


def test_unknown_fields_are_ignored_and_unset_ones_left_out() -> None:
    pointer = BranchPointer.parse(
        {"run_dir": "r", "run_id": "1", "branch": "", "branch_dir": "r", "display_name": "x", "classes": 4.0},
        "metadata",
    )
    assert pointer.classes == 4  # KFP keeps artifact metadata as a protobuf Struct: numbers come back floats
    assert pointer.to_json() == {
        "run_dir": "r",
        "run_id": "1",
        "branch": "",
        "branch_dir": "r",
        "datasets": [],
        "classes": 4,
        "run_key": "",
        "stage_keys": {},
        "reuse_stages": False,
    }  # fields that default to None (index, fingerprint, trained_by, ...) are left out


def test_a_model_record_scores_the_mean_of_its_targets_and_round_trips() -> None:
    def target(score: float) -> TargetResult:
        return TargetResult(
            evaluation_set=f"{score}:validation",
            score=score,
            checkpoint="c.pt",
            clip_accuracy=score,
            video_top1=score,
            video_top5=1.0,
        )

    record = ModelRecord(
        run_id="r", branch="b", fingerprint="f", model="r3d-50", targets={"u": target(0.5), "h": target(0.7)}
    )
    assert record.score == pytest.approx(0.6)
    assert record.evaluation_sets == {"u": "0.5:validation", "h": "0.7:validation"}
    assert ModelRecord.parse(json.loads(json.dumps(record.to_json())), "x") == record


def test_records_never_import_torch() -> None:
    probe = "import sys, mega3d.trainer.records\nprint(any(m.split('.')[0] == 'torch' for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
