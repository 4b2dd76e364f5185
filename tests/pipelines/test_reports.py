from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
from kfp.dsl import Artifact, ClassificationMetrics

from mega3d.pipelines.reports import CONFUSION_MAX_CLASSES, class_table, confusion_csv, curves_html
from mega3d.pipelines.tasks import log_confusion
from mega3d.trainer.records import EpochRecord


def test_best_and_worst_classes_in_order() -> None:
    table = class_table({"a": 0.5, "b": 1.0, "c": 0.0, "d": 0.75}, "accuracy", shown=2)
    assert table.splitlines() == [
        "### Top 2 classes by accuracy",
        "",
        "| class | accuracy (%) |",
        "|---|---:|",
        "| b | 100.0 |",
        "| d | 75.0 |",
        "",
        "### Bottom 2 classes by accuracy",
        "",
        "| class | accuracy (%) |",
        "|---|---:|",
        "| c | 0.0 |",
        "| a | 50.0 |",
    ]


def test_curves_page_embeds_a_png() -> None:
    history = [
        EpochRecord(
            epoch=e,
            train_loss=2.0 / e,
            val_loss=2.2 / e,
            train_accuracy=0.2 * e,
            lr=0.1,
            clips_per_s=100.0,
            data_wait=0.01,
            seconds=3.0,
            unreadable=0,
        )
        for e in (1, 2, 3)
    ]
    page = curves_html(history, "quickstart motion-c: training")
    encoded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert encoded is not None and "<title>quickstart motion-c: training</title>" in page
    assert base64.b64decode(encoded.group(1)).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_confusion_table_reads_back_with_awkward_class_names() -> None:
    classes = ['say "hi"', "jump, then land", "plain"]
    matrix = [[3, 0, 1], [0, 2, 0], [5, 0, 0]]
    rows = list(csv.reader(io.StringIO(confusion_csv(classes, matrix))))
    assert rows[0] == ["true\\predicted", *classes]
    assert [row[0] for row in rows[1:]] == classes
    assert [[int(cell) for cell in row[1:]] for row in rows[1:]] == matrix


@pytest.mark.parametrize("n_classes", [101, CONFUSION_MAX_CLASSES, CONFUSION_MAX_CLASSES + 39])
def test_the_viewer_gets_the_matrix_up_to_the_cap_and_the_table_always(
    tmp_path: Path, n_classes: int
) -> None:
    classes = [f"class {i}" for i in range(n_classes)]
    matrix = np.eye(n_classes, dtype=int).tolist()
    viewer = ClassificationMetrics(name="confusion")
    table = Artifact(name="confusion_csv", uri=str(tmp_path / "confusion.csv"))
    table.path = str(tmp_path / "confusion.csv")
    log_confusion(classes, matrix, "9 val videos", viewer, table)
    shown = n_classes <= CONFUSION_MAX_CLASSES
    logged = viewer.metadata.get("confusionMatrix")
    assert (logged is not None) == shown
    if logged is not None:
        assert len(logged["rows"]) == n_classes and logged["rows"][7]["row"][7] == 1
    rows = list(csv.reader(io.StringIO(Path(table.path).read_text())))
    assert len(rows) == n_classes + 1 and rows[8][8] == "1"
    assert table.metadata["classes"] == n_classes and table.metadata["in_confusion_matrix_artifact"] == shown
