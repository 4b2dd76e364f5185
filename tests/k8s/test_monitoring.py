"""The alerts and the Grafana dashboard of k8s/base: they use only the metrics the trainer exports, their
PromQL parses (Prometheus' own `promtool`), and the alerts fire when, and only when, they should: promtool
evaluates them over synthetic series of stalled, diverging, starved and restarting jobs, and of healthy ones.

promtool comes with Debian's `prometheus` package; without it those tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
RULES = BASE / "prometheusrule.yaml"
DASHBOARD = BASE / "grafana" / "mega3d-dashboard.json"

# What the trainer exports (every series labelled experiment, branch, run, stage, node, rank), under the names
# a scrape sees: counters end in _total, histograms are _bucket, _sum and _count series, the info metric ends
# in _info.
COUNTERS = {"mega3d_steps_total", "mega3d_clips_total", "mega3d_unreadable_videos_total"}
GAUGES = {
    "mega3d_loss",
    "mega3d_learning_rate",
    "mega3d_epoch",
    "mega3d_evaluation_accuracy",
    "mega3d_gpu_memory_allocated_bytes",
    "mega3d_gpu_memory_peak_bytes",
    "mega3d_start_time_seconds",
    "mega3d_preemptions",
    "mega3d_preempted_seconds",
}
HISTOGRAMS = {"mega3d_step_seconds", "mega3d_data_wait_seconds"}
EXPORTED = (
    COUNTERS
    | GAUGES
    | {f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    | {"mega3d_run_info"}
)
ALERTS = {"Mega3dNoTrainingProgress", "Mega3dLossIsNaN", "Mega3dDataStarved", "Mega3dJobRestarting"}

PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
}
PROMQL_KEYWORDS |= {"offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: every identifier that is not a function or aggregation
    (followed by a parenthesis), a keyword, a label name (inside braces or a by/on clause) or a duration."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and other strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subquery resolutions
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", expr):
        word, call = match.groups()
        if not call and word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names


def grouping_labels(expr: str) -> list[set[str]]:
    """The label lists of an expression's by (...) and on (...) clauses."""
    return [
        {label.strip() for label in match.group(1).split(",") if label.strip()}
        for match in re.finditer(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
    ]


def rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text())["spec"]["groups"])


def alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rule_groups() for rule in group["rules"] if "alert" in rule}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_targets() -> list[tuple[str, dict[str, Any]]]:
    return [
        (panel["title"], target) for panel in dashboard()["panels"] for target in panel.get("targets", [])
    ]


def test_metric_names_are_read_from_promql() -> None:
    expr = 'sum by (rank) (rate(mega3d_clips_total{stage=~"$stage"}[5m])) / on (rank) group_left up offset 5m'
    assert metric_names(expr) == {"mega3d_clips_total", "up"}
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(x_bucket{a="b(c)"}[1h:1m])))') == {
        "x_bucket"
    }
    assert metric_names("mega3d_loss != mega3d_loss and time() - mega3d_start_time_seconds > 15 * 60") == {
        "mega3d_loss",
        "mega3d_start_time_seconds",
    }


# Alerts.


def test_the_alerts_are_the_four_of_group_mega3d_with_severity_and_text() -> None:
    assert [group["name"] for group in rule_groups()] == ["mega3d"]
    rules = alert_rules()
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name


def test_the_alerts_use_only_exported_metrics() -> None:
    for name, rule in alert_rules().items():
        used = metric_names(rule["expr"])
        assert used, name
        assert used <= EXPORTED, f"{name}: {sorted(used - EXPORTED)}"


def test_grouping_labels_are_read_from_promql() -> None:
    expr = "max by (namespace, experiment) (x) and on(stage) sum by(rank)(y) / sum(z)"
    assert grouping_labels(expr) == [{"namespace", "experiment"}, {"stage"}, {"rank"}]


def aggregations_that_mix_branches_or_runs(expr: str) -> list[set[str]]:
    """The groupings that keep an experiment or a stage apart but not its branches and runs."""
    return [
        labels
        for labels in grouping_labels(expr)
        if labels & {"experiment", "stage"} and not {"branch", "run"} <= labels
    ]


def test_the_alerts_keep_branches_and_runs_apart() -> None:
    for name, rule in alert_rules().items():
        assert aggregations_that_mix_branches_or_runs(rule["expr"]) == [], name
    assert aggregations_that_mix_branches_or_runs("max by (namespace, experiment, stage) (x)")


def test_the_metric_check_catches_unknown_names() -> None:
    for expr in ("up == 0", "rate(mega3d_step_seconds[5m])", "mega3d_loss_total", "mega3d_steps"):
        assert not metric_names(expr) <= EXPORTED, expr


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        # make test installs the servers: in CI their absence is a broken set-up, not a reason to skip
        missing = pytest.fail if os.environ.get("CI") else pytest.skip
        missing("promtool not found: install Debian's `prometheus` package (the Makefile's test set-up does)")
    return found


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def write_rules(directory: Path, groups: list[dict[str, Any]]) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_accepts_the_rules(promtool: str, tmp_path: Path) -> None:
    checked = run_promtool(
        promtool, "check", "rules", write_rules(tmp_path, rule_groups()).name, cwd=tmp_path
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "4 rules found" in checked.stdout


def test_promtool_refuses_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    groups = rule_groups()
    groups[0]["rules"][0]["expr"] = "max by (stage) (increase(mega3d_steps_total[15m]) == 0"
    checked = run_promtool(promtool, "check", "rules", write_rules(tmp_path, groups).name, cwd=tmp_path)
    assert checked.returncode != 0


def expand(template: str, labels: dict[str, str], value: str) -> str:
    """A Prometheus annotation template with the alert's labels and (already formatted) value filled in: the
    Go template actions the rules use, `{{-` trimming the space before it, and a `with` block on a label
    (empty without that label) in which `{{ . }}` is the label's value."""
    template = re.sub(r"\s*\{\{-", "{{", template)

    def with_label(match: re.Match[str]) -> str:
        label = labels.get(match.group(1), "")
        return re.sub(r"\{\{\s*\.\s*\}\}", label, match.group(2)) if label else ""

    template = re.sub(
        r"\{\{\s*with\s+\$labels\.(\w+)\s*\}\}(.*?)\{\{\s*end\s*\}\}", with_label, template, flags=re.S
    )
    template = re.sub(r"\{\{\s*\$value(\s*\|\s*humanizePercentage)?\s*\}\}", value, template)
    return re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ", ".join(f'{key}="{label}"' for key, label in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


# The exporter's labels of a run without a sweep: its branch is empty.
JOB = {"namespace": "vision", "stage": "pretrain", "branch": "", "run": "r1"}


def stalled_young_and_healthy_jobs() -> list[dict[str, str]]:
    """Minute by minute: branch `lr-0.1` of `stalled` steps for 15 minutes then stops (two ranks), while
    branch `lr-0.01` of the same experiment and run steps throughout; `young` started at minute 20 and has
    not stepped yet (still loading); `healthy` steps throughout. All processes of stalled and healthy
    started at minute 0."""
    out = []
    for rank in ("0", "1"):
        job = {
            **JOB,
            "experiment": "stalled",
            "branch": "lr-0.1",
            "node": rank,
            "rank": rank,
            "instance": f"10.0.0.{rank}:9400",
        }
        out += [
            series("mega3d_steps_total", "0+10x15 150x40", **job),
            series("mega3d_start_time_seconds", "0x55", **job),
        ]
    other_branch = {
        **JOB,
        "experiment": "stalled",
        "branch": "lr-0.01",
        "node": "0",
        "rank": "0",
        "instance": "10.0.3.0:9400",
    }
    out += [
        series("mega3d_steps_total", "0+10x55", **other_branch),
        series("mega3d_start_time_seconds", "0x55", **other_branch),
    ]
    young = {**JOB, "experiment": "young", "node": "0", "rank": "0", "instance": "10.0.1.0:9400"}
    out += [
        series("mega3d_steps_total", "_x20 0x35", **young),
        series("mega3d_start_time_seconds", "_x20 1200x35", **young),
    ]
    healthy = {**JOB, "experiment": "healthy", "node": "0", "rank": "0", "instance": "10.0.2.0:9400"}
    out += [
        series("mega3d_steps_total", "0+10x55", **healthy),
        series("mega3d_start_time_seconds", "0x55", **healthy),
    ]
    return out


def diverging_rank() -> list[dict[str, str]]:
    job = {**JOB, "experiment": "k700", "branch": "lr-0.1", "node": "1"}
    return [
        series("mega3d_loss", "2.3 2.1 NaN NaN", **job, rank="9"),
        series("mega3d_loss", "2.3 2.2 2.0 1.9", **job, rank="8"),
    ]


def starved_rank() -> list[dict[str, str]]:
    """In branch `workers-2`, rank 0 waits 36 of every 60 seconds of its steps for data, rank 1 only 6; in
    branch `workers-8` of the same experiment and run, both ranks wait 6."""
    out = []
    waits = {
        ("workers-2", "0"): "36",
        ("workers-2", "1"): "6",
        ("workers-8", "0"): "6",
        ("workers-8", "1"): "6",
    }
    for (branch, rank), wait in waits.items():
        job = {**JOB, "experiment": "k700", "branch": branch, "node": "0", "rank": rank}
        out += [
            series("mega3d_data_wait_seconds_sum", f"0+{wait}x40", **job),
            series("mega3d_step_seconds_sum", "0+60x40", **job),
        ]
    return out


def restarting_job() -> list[dict[str, str]]:
    """`k700` restarts at minutes 10, 20 and 30: each time every rank's pod comes back with a new address
    (new series) and a new start time. `steady` restarts once, at minute 20. `rerun` never restarts, but
    runs again every 10 minutes (runs r1 to r4)."""
    out = []
    for rank in ("0", "1"):
        for restart in range(4):
            job = {
                **JOB,
                "experiment": "k700",
                "node": rank,
                "rank": rank,
                "instance": f"10.0.{restart}.{rank}:9400",
            }
            start = restart * 600 + int(rank)
            length = 9 if restart < 3 else 30
            values = f"_x{restart * 10} {start}x{length}" if restart else f"{start}x{length}"
            out.append(series("mega3d_start_time_seconds", values, **job))
    for restart in range(2):
        job = {**JOB, "experiment": "steady", "node": "0", "rank": "0", "instance": f"10.1.{restart}.0:9400"}
        out.append(series("mega3d_start_time_seconds", "0x19" if not restart else "_x20 1200x40", **job))
    for run in range(4):
        job = {
            **JOB,
            "experiment": "rerun",
            "run": f"r{run + 1}",
            "node": "0",
            "rank": "0",
            "instance": f"10.2.{run}.0:9400",
        }
        values = f"_x{run * 10} {run * 600}x{9 if run < 3 else 30}" if run else "0x9"
        out.append(series("mega3d_start_time_seconds", values, **job))
    return out


def expected(alert: str, labels: dict[str, str], value: str = "") -> dict[str, Any]:
    rule = alert_rules()[alert]
    # Prometheus drops labels with empty values: an alert of a run without a sweep has no branch label.
    all_labels = {key: label for key, label in {**labels, **rule["labels"]}.items() if label}
    annotations = {key: expand(text, all_labels, value) for key, text in rule["annotations"].items()}
    return {"exp_labels": all_labels, "exp_annotations": annotations}


def alert_tests() -> list[dict[str, Any]]:
    stage = {"namespace": "vision", "stage": "pretrain", "run": "r1"}
    stalled = {**stage, "experiment": "stalled", "branch": "lr-0.1"}
    return [
        {
            "interval": "1m",
            "input_series": stalled_young_and_healthy_jobs(),
            "alert_rule_test": [
                # Stalled since minute 15: the 15-minute window holds no step from minute 30, firing 5 later.
                {"eval_time": "34m", "alertname": "Mega3dNoTrainingProgress", "exp_alerts": []},
                {
                    "eval_time": "36m",
                    "alertname": "Mega3dNoTrainingProgress",
                    "exp_alerts": [expected("Mega3dNoTrainingProgress", stalled)],
                },
                # The young job counts only once its processes are 15 minutes old (minute 35), 5 more to fire.
                {
                    "eval_time": "41m",
                    "alertname": "Mega3dNoTrainingProgress",
                    "exp_alerts": [
                        expected("Mega3dNoTrainingProgress", stalled),
                        expected("Mega3dNoTrainingProgress", {**stage, "experiment": "young"}),
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": diverging_rank(),
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "Mega3dLossIsNaN", "exp_alerts": []},
                {
                    "eval_time": "2m",
                    "alertname": "Mega3dLossIsNaN",
                    "exp_alerts": [
                        expected(
                            "Mega3dLossIsNaN",
                            {**stage, "experiment": "k700", "branch": "lr-0.1", "node": "1", "rank": "9"},
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": starved_rank(),
            "alert_rule_test": [
                {"eval_time": "14m", "alertname": "Mega3dDataStarved", "exp_alerts": []},
                {
                    "eval_time": "30m",
                    "alertname": "Mega3dDataStarved",
                    "exp_alerts": [
                        expected(
                            "Mega3dDataStarved",
                            {**stage, "experiment": "k700", "branch": "workers-2", "rank": "0"},
                            "60%",
                        )
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": restarting_job(),
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": "Mega3dJobRestarting", "exp_alerts": []},
                {
                    "eval_time": "35m",
                    "alertname": "Mega3dJobRestarting",
                    "exp_alerts": [expected("Mega3dJobRestarting", {**stage, "experiment": "k700"}, "3")],
                },
            ],
        },
    ]


def run_alert_tests(
    promtool: str, directory: Path, groups: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    rules = write_rules(directory, groups)
    tests = directory / "tests.yaml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": alert_tests()}, sort_keys=False
        )
    )
    return run_promtool(promtool, "test", "rules", tests.name, cwd=directory)


def test_the_alerts_fire_when_and_only_when_they_should(promtool: str, tmp_path: Path) -> None:
    tested = run_alert_tests(promtool, tmp_path, rule_groups())
    assert tested.returncode == 0, tested.stdout + tested.stderr


# The simple forms of two alerts, and why they are not enough: the series above catch them.
NAIVE = {
    # Fires for a job that is still starting and has not stepped yet.
    "Mega3dNoTrainingProgress": "increase(mega3d_steps_total[15m]) == 0",
    # Never fires: each restart is a new series (new pod address), in which the start time never changes.
    "Mega3dJobRestarting": "changes(mega3d_start_time_seconds[1h]) > 2",
}


@pytest.mark.parametrize("alert", sorted(NAIVE))
def test_the_test_series_catch_the_naive_expressions(promtool: str, tmp_path: Path, alert: str) -> None:
    groups = rule_groups()
    for rule in groups[0]["rules"]:
        if rule.get("alert") == alert:
            rule["expr"] = NAIVE[alert]
    tested = run_alert_tests(promtool, tmp_path, groups)
    assert tested.returncode != 0
    assert alert in tested.stdout + tested.stderr


# What goes wrong when an alert groups by experiment and stage alone, in promtool's report of the alerts it
# got: no alert at all where another branch of the experiment hides the trouble, an alert where successive
# runs look like restarts.
MIXED = {
    "Mega3dNoTrainingProgress": "got:[]",  # the stalled branch's sibling still steps
    "Mega3dDataStarved": "got:[]",  # the starved rank's share, averaged with the other branch's rank
    "Mega3dJobRestarting": 'experiment="rerun"',  # four runs, no restart
}


@pytest.mark.parametrize("alert", sorted(MIXED))
def test_the_test_series_catch_alerts_that_mix_branches_or_runs(
    promtool: str, tmp_path: Path, alert: str
) -> None:
    groups = rule_groups()
    for rule in groups[0]["rules"]:
        if rule.get("alert") == alert:
            rule["expr"] = re.sub(r"\b(?:branch|run),\s*", "", rule["expr"])
            assert aggregations_that_mix_branches_or_runs(rule["expr"])
    tested = run_alert_tests(promtool, tmp_path, groups)
    assert tested.returncode != 0
    report = tested.stdout + tested.stderr
    assert alert in report and MIXED[alert] in report, report


# The dashboard.


def test_the_dashboard_has_the_panels_and_variables_it_promises() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert {"experiment", "branch", "run", "stage", "datasource"} <= set(variables)
    for name in ("experiment", "branch", "run", "stage"):
        # All must match series without the label too: a run without a sweep has an empty branch.
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*", name
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel.get("targets"), panel["title"]
    used = set().union(*(metric_names(target["expr"]) for _, target in panel_targets()))
    assert {
        "mega3d_clips_total",
        "mega3d_loss",
        "mega3d_learning_rate",
        "mega3d_evaluation_accuracy",
        "mega3d_data_wait_seconds_sum",
        "mega3d_step_seconds_sum",
        "mega3d_gpu_memory_allocated_bytes",
        "mega3d_gpu_memory_peak_bytes",
    } <= used
    throughput = [t["expr"] for title, t in panel_targets() if "mega3d_clips_total" in t["expr"]]
    assert any(
        re.search(r"sum by \(rank\) \(rate\(mega3d_clips_total\{[^}]*\}\[5m\]\)\)", e) for e in throughput
    )


def test_the_dashboard_uses_only_exported_metrics_filtered_by_its_variables() -> None:
    for title, target in panel_targets():
        used = metric_names(target["expr"])
        assert used, title
        assert used <= EXPORTED, f"{title}: {sorted(used - EXPORTED)}"
        for selector in re.finditer(r"(mega3d_\w+)(\{[^}]*\})?", target["expr"]):
            matchers = selector.group(2) or ""
            for variable in ("experiment", "branch", "run", "stage"):
                assert f'{variable}=~"${variable}"' in matchers, (title, selector[0])
        assert aggregations_that_mix_branches_or_runs(target["expr"]) == [], title
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":  # label_values(SELECTOR, LABEL)
            query = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert query is not None, variable["name"]
            assert metric_names(query.group(1)) == {"mega3d_run_info"}, variable["name"]
            assert query.group(2) == variable["name"]


def test_promtool_parses_every_dashboard_query(promtool: str, tmp_path: Path) -> None:
    # Grafana's variables as Prometheus would receive them once Grafana has filled them in.
    rules = [
        {
            "record": f"dashboard:panel_{index}",
            "expr": re.sub(r"\$(experiment|branch|run|stage)\b", ".*", target["expr"]),
        }
        for index, (_, target) in enumerate(panel_targets())
    ]
    checked = run_promtool(
        promtool,
        "check",
        "rules",
        write_rules(tmp_path, [{"name": "dashboard", "rules": rules}]).name,
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
