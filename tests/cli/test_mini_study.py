"""The study that runs here, end to end: `mega3d run examples/mini-study.yaml`, then `mega3d report` on it
(about two minutes on 2 cores)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import ROOT, mega3d

pytestmark = pytest.mark.slow


def test_the_mini_study_runs_and_reports(tmp_path: Path) -> None:
    ran = mega3d(
        "run", str(ROOT / "examples" / "mini-study.yaml"), "--run-id", "mini", cwd=tmp_path, timeout=900
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-4000:]
    run = tmp_path / "runs" / "mini-study" / "experiments" / "mini-study" / "runs" / "mini"
    reported = mega3d("report", str(run), "-o", str(tmp_path / "report"), cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr
    report = tmp_path / "report"
    for name in ("accuracy_vs_depth.png", "accuracy_vs_categories.png", "classes_diagonals.png"):
        assert (report / name).read_bytes().startswith(b"\x89PNG"), name
    with (report / "table.csv").open() as table:
        rows = list(csv.DictReader(table))
    assert sorted((row["pretraining"], row["architecture"]) for row in rows) == sorted(
        (f"motions{kept}", f"r3d-{depth}")
        for kept in ("", " (60% categories)", " (30% categories)")
        for depth in (10, 18)
    )
    assert all(0 <= float(row["diagonals top-1"]) <= 100 for row in rows)
    assert "accuracy_vs_categories.png" in (report / "index.html").read_text()
