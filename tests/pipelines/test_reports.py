from __future__ import annotations

import base64
import re

from mega3d.pipelines.reports import class_table, curves_html
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
