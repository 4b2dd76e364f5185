from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image

from mega3d.report import study
from mega3d.trainer import layout, storage
from mega3d.trainer.records import Scores
from mega3d.trainer.spec import Branch, parse_spec
from tests.conftest import mega3d

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEPTH_RUN = "experiments/depth/runs/20260101-000000"
CATEGORIES_RUN = "experiments/categories/runs/20260201-000000"
GAP = "\u2013"  # an en dash
UCF_CLASSES = 45  # more than top-20 + bottom-20: the figure leaves 5 out
HMDB_CLASSES = 6

# (clip, video top-1, video top-5) of each stage, by branch: (pretraining, depth) or category fraction.
DEPTH_RESULTS: dict[tuple[str, int], dict[str, tuple[float, float, float]]] = {
    ("kinetics", 18): {
        "pretrain": (0.412, 0.503, 0.781),
        "ucf": (0.801, 0.852, 0.973),
        "hmdb": (0.452, 0.503, 0.801),
    },
    ("kinetics", 50): {
        "pretrain": (0.431, 0.522, 0.792),
        "ucf": (0.811, 0.862, 0.978),
        "hmdb": (0.471, 0.522, 0.813),
    },
    ("kinetics+mit", 18): {
        "pretrain": (0.382, 0.461, 0.742),
        "ucf": (0.823, 0.871, 0.981),
        "hmdb": (0.642, 0.694, 0.902),
    },
    ("kinetics+mit", 50): {
        "pretrain": (0.401, 0.484, 0.763),
        "ucf": (0.842, 0.893, 0.984),
    },  # hmdb: not evaluated
}
CATEGORY_RESULTS: dict[float, dict[str, tuple[float, float, float]]] = {
    0.1: {"pretrain": (0.702, 0.781, 0.962), "ucf": (0.611, 0.653, 0.881), "hmdb": (0.301, 0.342, 0.662)},
    0.5: {"pretrain": (0.551, 0.612, 0.873), "ucf": (0.772, 0.814, 0.952), "hmdb": (0.412, 0.463, 0.771)},
    1.0: {"pretrain": (0.443, 0.534, 0.801), "ucf": (0.883, 0.921, 0.991), "hmdb": (0.482, 0.531, 0.822)},
}
EXPECTED_HEADER = [
    "pretraining",
    "architecture",
    *(
        f"{target} {metric}"
        for target in ("pretrain", "ucf", "hmdb")
        for metric in ("clip", "top-1", "top-5")
    ),
    "run",
]
DEPTH_ID, CATEGORIES_ID = "depth/20260101-000000", "categories/20260201-000000"


def expected_row(pretraining: str, architecture: str, *targets: str, run: str) -> list[str]:
    """A CSV row from each target's "clip top-1 top-5" ("" for a gap)."""
    return [
        pretraining,
        architecture,
        *(cell for cells in targets for cell in cells.split() or 3 * [""]),
        run,
    ]


EXPECTED_ROWS = [
    expected_row("kinetics", "r3d-18", "41.2 50.3 78.1", "80.1 85.2 97.3", "45.2 50.3 80.1", run=DEPTH_ID),
    # in both runs: the later argument's (the categories run's c100 branch)
    expected_row(
        "kinetics", "r3d-50", "44.3 53.4 80.1", "88.3 92.1 99.1", "48.2 53.1 82.2", run=CATEGORIES_ID
    ),
    expected_row(
        "kinetics (50% categories)",
        "r3d-50",
        "55.1 61.2 87.3",
        "77.2 81.4 95.2",
        "41.2 46.3 77.1",
        run=CATEGORIES_ID,
    ),
    expected_row(
        "kinetics (10% categories)",
        "r3d-50",
        "70.2 78.1 96.2",
        "61.1 65.3 88.1",
        "30.1 34.2 66.2",
        run=CATEGORIES_ID,
    ),
    expected_row(
        "kinetics+mit", "r3d-18", "38.2 46.1 74.2", "82.3 87.1 98.1", "64.2 69.4 90.2", run=DEPTH_ID
    ),
    expected_row("kinetics+mit", "r3d-50", "40.1 48.4 76.3", "84.2 89.3 98.4", "", run=DEPTH_ID),
]


def spec_data(storage_root: Path, name: str, model: str, sweep: dict[str, Any]) -> dict[str, Any]:
    """A spec like examples/quickstart.yaml: pretraining on kinetics, two fine-tune targets, a sweep."""
    return {
        "name": name,
        "storage": str(storage_root),
        "datasets": {
            dataset: {"uri": f"datasets/{dataset}"} for dataset in ("kinetics", "mit", "ucf", "hmdb")
        },
        "model": {"name": model},
        "pretrain": {"datasets": ["kinetics"]},
        "finetune": [{"name": "ucf", "dataset": "ucf"}, {"name": "hmdb", "dataset": "hmdb"}],
        "sweep": sweep,
    }


def metrics(values: tuple[float, float, float], classes: int) -> dict[str, Any]:
    """A metrics.json as evaluation writes it; per-class accuracies all different, class-00 the best."""
    clip, top1, top5 = values
    names = [f"class-{i:02d}" for i in range(classes)]
    return {
        "clip_accuracy": clip,
        "video_top1": top1,
        "video_top5": top5,
        "mean_class_accuracy": top1,
        "classes": names,
        "per_class_accuracy": {name: 1 - i / classes for i, name in enumerate(names)},
    }


def write_run(
    root: str,
    data: dict[str, Any],
    results: dict[Any, dict[str, tuple[float, float, float]]],
    branch_key: Callable[[Branch], Any],
) -> None:
    """spec.json and the metrics files of every branch, those of `results[branch_key(branch)]`."""
    spec = parse_spec(data)
    storage.write_bytes(storage.join(root, layout.SPEC_FILE), spec.model_dump_json().encode())
    for branch in spec.branches():
        branch_dir = layout.branch_dir(root, branch.name)
        storage.write_json(
            storage.join(branch_dir, "spec.json"), spec.for_branch(branch).model_dump(mode="json")
        )
        for stage, values in results[branch_key(branch)].items():
            directory = (
                layout.stage_dir(branch_dir, stage)
                if stage == "pretrain"
                else layout.evaluation_dir(branch_dir, stage)
            )
            classes = {"pretrain": 8, "ucf": UCF_CLASSES, "hmdb": HMDB_CLASSES}[stage]
            storage.write_json(storage.join(directory, layout.METRICS_FILE), metrics(values, classes))


@pytest.fixture
def runs(tmp_path: Path) -> tuple[str, str]:
    """Two finished runs: depth 18/50 x two pretrainings (one evaluation missing), and category fractions."""
    store = tmp_path / "store"
    depth_sweep = {"pretrain_datasets": [["kinetics"], ["kinetics", "mit"]], "depth": [18, 50]}
    write_run(
        str(store / DEPTH_RUN),
        spec_data(store, "depth", "r3d-18", depth_sweep),
        DEPTH_RESULTS,
        lambda branch: ("+".join(branch.pretrain_datasets), int(branch.model.name.rpartition("-")[2])),
    )
    category_sweep = {"category_fraction": [0.1, 0.5, 1.0]}
    write_run(
        str(store / CATEGORIES_RUN),
        spec_data(store, "categories", "r3d-50", category_sweep),
        CATEGORY_RESULTS,
        lambda branch: branch.category_fraction,
    )
    return str(store / DEPTH_RUN), str(store / CATEGORIES_RUN)


def png_shape(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    height, width = image.imread(path).shape[:2]
    return height, width


def assert_aspect(path: Path, size: tuple[float, float]) -> None:
    height, width = png_shape(path)
    assert math.isclose(width / height, size[0] / size[1], rel_tol=0.01), (path, width, height, size)


def test_report_writes_the_tables_figures_and_page(runs: tuple[str, str], tmp_path: Path) -> None:
    output = tmp_path / "report"
    result = mega3d("report", *runs, "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert (
        "read depth/20260101-000000" in result.stdout and "read categories/20260201-000000" in result.stdout
    )
    assert "1 metrics files missing" in result.stdout  # the depth run's hmdb of kinetics+mit_r3d-50
    assert "not drawn: accuracy_vs_instances.png" in result.stdout

    with open(output / "table.csv", newline="") as table:
        assert list(csv.reader(table)) == [EXPECTED_HEADER, *EXPECTED_ROWS]

    markdown = (output / "table.md").read_text().splitlines()
    assert markdown[0] == "| " + " | ".join(EXPECTED_HEADER) + " |"
    assert markdown[2:8] == ["| " + " | ".join(cell or GAP for cell in row) + " |" for row in EXPECTED_ROWS]
    assert (
        "- kinetics / r3d-50: from run categories/20260201-000000 (also in depth/20260101-000000)" in markdown
    )

    line_figures = ["accuracy_vs_depth.png", "accuracy_vs_categories.png"]
    class_figures = {"classes_ucf.png": 2 * study.SHOWN_CLASSES, "classes_hmdb.png": HMDB_CLASSES}
    for name in line_figures:
        assert_aspect(output / name, study.LINE_FIGURE_SIZE)
    for name, bars in class_figures.items():
        assert_aspect(output / name, study.class_figure_size(bars))
    assert not (output / "accuracy_vs_instances.png").exists()

    page = (output / "index.html").read_text()
    for name in [*line_figures, *class_figures]:
        assert f"<img src='{name}'" in page
    assert "accuracy_vs_instances.png: not drawn" in page
    assert f"<td>89.3</td><td>98.4</td><td>{GAP}</td>" in page
    assert all(root in page for root in runs)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "report",
        "store",
    ]  # no partial directory left


def rounded(line: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A figure's points without the float noise of x 100."""
    return [(x, round(y, 6)) for x, y in line]


def test_figures_show_the_newest_rows(runs: tuple[str, str]) -> None:
    report = study.build_report([study.read_run(root) for root in runs])
    depth = study.depth_series(report)
    assert rounded(depth["ucf: r3d, kinetics"]) == [(18, 85.2), (50, 92.1)]  # 50: the categories run's
    assert "hmdb: r3d, kinetics+mit" not in depth  # one depth only: the other is a gap
    assert rounded(depth["pretrain: r3d, kinetics+mit"]) == [(18, 46.1), (50, 48.4)]
    categories = study.fraction_series(report, "categories")
    assert categories.keys() == {"ucf: kinetics r3d-50", "hmdb: kinetics r3d-50"}
    assert rounded(categories["ucf: kinetics r3d-50"]) == [(10, 65.3), (50, 81.4), (100, 92.1)]
    assert rounded(categories["hmdb: kinetics r3d-50"]) == [(10, 34.2), (50, 46.3), (100, 53.1)]
    assert study.fraction_series(report, "instances") == {}
    best = study.best_rows(report)
    assert (best["ucf"].run, best["ucf"].key) == (
        "categories/20260201-000000",
        ("kinetics", 1.0, 1.0, "r3d-50"),
    )
    assert best["hmdb"].key == ("kinetics+mit", 1.0, 1.0, "r3d-18")
    shown = study.shown_classes(best["ucf"].evaluations["ucf"].per_class)
    assert [name for name, _ in shown] == [f"class-{i:02d}" for i in (*range(20), *range(25, 45))]


def test_an_existing_report_is_replaced_and_other_files_kept(runs: tuple[str, str], tmp_path: Path) -> None:
    output = tmp_path / "report"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    (output / "classes_gone.png").write_bytes(PNG_SIGNATURE)  # from an earlier report with another target
    (output / "table.csv").write_text("old")
    result = mega3d("report", runs[0], "-o", str(output))
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in output.iterdir())
    assert names == [
        "accuracy_vs_depth.png",
        "classes_hmdb.png",
        "classes_ucf.png",
        "index.html",
        "notes.txt",
        "table.csv",
        "table.md",
    ]
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / "table.csv").read_text().startswith("pretraining,architecture,")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["report", "store"]


def test_bad_input_is_one_line_and_writes_nothing(runs: tuple[str, str], tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    not_a_run = tmp_path / "store"
    before = sorted(tmp_path.rglob("*"))
    for args, named in (
        (
            [str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")],
            f"{tmp_path / 'nowhere'}: no such run directory",
        ),
        ([str(not_a_run), "-o", str(tmp_path / "out")], f"{not_a_run}: no spec.json"),
        ([runs[0], "-o", str(a_file)], f"--output {a_file}: is a file"),
    ):
        result = mega3d("report", *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {named}"), lines
        assert sorted(tmp_path.rglob("*")) == before


def test_pretraining_names() -> None:
    assert study.pretraining_name(["kinetics700", "mit"], ["pretrain"]) == "kinetics700+mit"
    assert study.pretraining_name([], ["checkpoints/r3d50_KM_200ep.pth"]) == "r3d50_KM_200ep.pth"
    assert study.pretraining_name([], ["scratch"]) == "scratch"
    assert study.pretraining_label("kinetics700", 0.3, 1.0) == "kinetics700 (30% categories)"
    assert study.pretraining_label("k", 0.1, 0.5) == "k (10% categories, 50% instances)"
    assert study.pretraining_label("k", 1.0, 1.0) == "k"


def test_multi_label_targets_get_an_map_column_and_scratch_comes_first() -> None:
    def row(pretraining: str, mean_ap: float | None) -> study.Row:
        scores = Scores(clip_accuracy=0.5, video_top1=0.6, video_top5=0.7, mAP=mean_ap)
        return study.Row("e/r", "", pretraining, 1.0, 1.0, "r3d-18", {"tags": scores})

    run = study.RunResults("root", "e/r", ["tags"], [row("kinetics", 0.4), row("scratch", None)], 2, [])
    report = study.build_report([run])
    assert study.table_header(report) == [
        "pretraining",
        "architecture",
        "tags clip",
        "tags top-1",
        "tags top-5",
        "tags mAP",
        "run",
    ]
    assert study.table_rows(report) == [
        ["scratch", "r3d-18", "50.0", "60.0", "70.0", None, "e/r"],
        ["kinetics", "r3d-18", "50.0", "60.0", "70.0", "40.0", "e/r"],
    ]


def test_runs_in_object_storage_and_unreadable_metrics(tmp_path: Path) -> None:
    store = f"memory://report-test-{tmp_path.name}"
    root = f"{store}/{CATEGORIES_RUN}"
    category_sweep = {"category_fraction": [0.1, 0.5, 1.0]}
    data = spec_data(tmp_path, "categories", "r3d-50", category_sweep)
    write_run(root, data, CATEGORY_RESULTS, lambda branch: branch.category_fraction)
    try:
        run = study.read_run(root)
        assert (run.name, run.branches, len(run.rows), run.missing) == (CATEGORIES_ID, 3, 3, [])
        broken = f"{root}/branches/c50/ucf/evaluation/metrics.json"
        storage.write_bytes(broken, b"{not json")
        with pytest.raises(study.StudyError, match=f"^{broken}: not JSON"):
            study.read_run(root)
    finally:
        storage.remove(store)


def test_report_never_imports_torch(runs: tuple[str, str], tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mega3d.cli.main import app\n"
        f"result = CliRunner().invoke(app, ['report', *{list(runs)!r}, '-o', {str(tmp_path / 'out')!r}])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
