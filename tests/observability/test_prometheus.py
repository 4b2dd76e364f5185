"""Every training rank's metrics reach a real Prometheus and a real Pushgateway (the Debian packages'
binaries, started here on loopback ports and stopped at the end, whatever happens), during a local 2-node
`mega3d run --metrics`."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from mega3d.trainer.exporter import Endpoints, Exporter
from tests.conftest import QUICKSTART, mega3d

pytestmark = pytest.mark.slow

SCRAPE_SECONDS = 1


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65000:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as other:
                    other.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
    raise RuntimeError("no consecutive free ports")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_until_ready(url: str, process: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


class Servers:
    def __init__(self, prometheus: str, pushgateway: str, metrics_port: int) -> None:
        self.prometheus = prometheus
        self.pushgateway = pushgateway
        self.metrics_port = metrics_port

    def query(self, expression: str, start: float | None = None, end: float | None = None) -> list[Any]:
        if start is None:
            params = {"query": expression}
            result = get_json(f"{self.prometheus}/api/v1/query?{urllib.parse.urlencode(params)}")
        else:
            params = {"query": expression, "start": str(start), "end": str(end), "step": "1"}
            result = get_json(f"{self.prometheus}/api/v1/query_range?{urllib.parse.urlencode(params)}")
        assert result["status"] == "success", result
        series: list[Any] = result["data"]["result"]
        return series


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    found = [shutil.which(name) for name in ("prometheus", "prometheus-pushgateway")]
    binaries = [binary for binary in found if binary]
    if len(binaries) < len(found):
        # make test installs the servers: in CI their absence is a broken set-up, not a reason to skip
        missing = pytest.fail if os.environ.get("CI") else pytest.skip
        missing(
            "the Debian packages prometheus and prometheus-pushgateway are not installed (make test does)"
        )
    tmp = tmp_path_factory.mktemp("prometheus")
    prometheus_port, gateway_port, metrics_port = free_ports(1), free_ports(1), free_ports(2)
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [
            {  # the two local "nodes" of the quickstart: ranks 0 and 1
                "job_name": "mega3d",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{metrics_port}", f"127.0.0.1:{metrics_port + 1}"]}
                ],
            },
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}],
            },
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    processes = []
    try:
        gateway = subprocess.Popen(
            # Debian's build persists pushed metrics in /var/lib by default: keep them with this test instead.
            [
                binaries[1],
                f"--web.listen-address=127.0.0.1:{gateway_port}",
                f"--persistence.file={tmp / 'pushgateway.data'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "pushgateway.log").open("wb"),
        )
        processes.append(gateway)
        prometheus = subprocess.Popen(
            [
                binaries[0],
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "prometheus.log").open("wb"),
        )
        processes.append(prometheus)
        wait_until_ready(f"http://127.0.0.1:{gateway_port}/-/ready", gateway)
        wait_until_ready(f"http://127.0.0.1:{prometheus_port}/-/ready", prometheus)
        yield Servers(f"http://127.0.0.1:{prometheus_port}", f"http://127.0.0.1:{gateway_port}", metrics_port)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def observed_run(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> tuple[Servers, float, float]:
    tmp = tmp_path_factory.mktemp("observed")
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["storage"] = str(tmp / "store")
    spec["pretrain"]["epochs"] = 6
    spec["finetune"][0]["epochs"] = 2
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    started = time.time()
    result = mega3d(
        "run", str(tmp / "spec.yaml"), "--run-id", "observed", "--metrics",
        "--metrics-port", str(servers.metrics_port), "--pushgateway", servers.pushgateway,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    time.sleep(2 * SCRAPE_SECONDS)  # the pushgateway's last values are scraped too
    return servers, started, time.time()


def test_both_ranks_count_clips_upwards(observed_run: tuple[Servers, float, float]) -> None:
    servers, start, end = observed_run
    series = servers.query('mega3d_clips_total{job="mega3d", stage="pretrain"}', start, end)
    assert sorted(s["metric"]["rank"] for s in series) == ["0", "1"]
    for one in series:
        assert one["metric"]["experiment"] == "quickstart" and one["metric"]["node"] == one["metric"]["rank"]
        # No sweep: the branch label is empty, which Prometheus stores as no label at all.
        assert one["metric"]["run"] == "observed" and "branch" not in one["metric"]
        values = [float(value) for _, value in one["values"]]
        assert len(values) >= 3 and values[-1] > values[0] >= 0, values
        assert values == sorted(values)


def test_loss_is_finite_and_the_rest_of_the_training_metrics_exist(
    observed_run: tuple[Servers, float, float],
) -> None:
    servers, start, end = observed_run
    losses = servers.query('mega3d_loss{job="mega3d"}', start, end)
    assert losses and all(math.isfinite(float(v)) for s in losses for _, v in s["values"])
    for name in (
        "mega3d_steps_total",
        "mega3d_learning_rate",
        "mega3d_epoch",
        "mega3d_step_seconds_count",
        "mega3d_data_wait_seconds_bucket",
        "mega3d_start_time_seconds",
        "mega3d_preemptions",
        "mega3d_run_info",
    ):
        assert servers.query(f'{name}{{job="mega3d"}}', start, end), name
    info = servers.query('mega3d_run_info{job="mega3d", stage="pretrain"}', start, end)[0]["metric"]
    assert info["model"] == "r3d-10" and len(info["dataset_fingerprint"]) >= 16


def test_the_pushgateway_holds_every_stages_final_metrics(observed_run: tuple[Servers, float, float]) -> None:
    servers, _, _ = observed_run
    groups = [
        g
        for g in get_json(f"{servers.pushgateway}/api/v1/metrics")["data"]
        if g["labels"]["experiment"] == "quickstart"
    ]
    assert {(g["labels"]["branch"], g["labels"]["run"]) for g in groups} == {("", "observed")}
    keys = {(g["labels"]["stage"], g["labels"]["phase"], g["labels"]["rank"]) for g in groups}
    stages = [
        ("pretrain", "train"),
        ("motion-c", "train"),
        ("motion-c", "evaluate"),
    ]  # evaluate: its own step
    assert keys == {(stage, phase, rank) for stage, phase in stages for rank in ("0", "1")}
    final = 'job="mega3d-final", experiment="quickstart"'
    accuracy = servers.query(f'mega3d_evaluation_accuracy{{{final}, stage="motion-c"}}')
    kinds = {s["metric"]["kind"]: float(s["value"][1]) for s in accuracy if s["metric"]["rank"] == "0"}
    assert set(kinds) == {"clip", "video_top1", "video_top5"} and all(0 <= v <= 1 for v in kinds.values())
    for stage in ("pretrain", "motion-c"):
        clips = servers.query(f'mega3d_clips_total{{{final}, stage="{stage}", phase="train"}}')
        assert len(clips) == 2 and all(float(s["value"][1]) > 0 for s in clips), stage


def test_the_branches_and_runs_of_one_experiment_keep_their_own_final_metrics(servers: Servers) -> None:
    """Two branches of a sweep (one of them the empty branch of an experiment without a sweep) and a second
    run of one of them push the same stage, node, rank and phase: each must keep its own group instead of
    replacing the one pushed before it."""
    endpoints = Endpoints(None, one_host=False, pushgateway=servers.pushgateway)
    losses = {("", "r1"): 1.5, ("lr-0.1", "r1"): 2.5, ("lr-0.1", "r2"): 3.5}
    for (branch, run), loss in losses.items():
        exporter = Exporter("sweep", "pretrain", 0, 1, endpoints, branch=branch, run=run)
        exporter.record_step(seconds=1.0, waited=0.1, clips=8, loss=loss)
        exporter.push("train")
    groups = get_json(f"{servers.pushgateway}/api/v1/metrics")["data"]
    sweep = [g["labels"] for g in groups if g["labels"]["experiment"] == "sweep"]
    pushed = {(labels.get("branch"), labels.get("run")) for labels in sweep}
    assert pushed == set(losses)
    deadline = time.monotonic() + 20 * SCRAPE_SECONDS
    while True:  # until Prometheus has scraped the Pushgateway since the last push
        series = servers.query('mega3d_loss{job="mega3d-final", experiment="sweep"}')
        scraped = {(s["metric"].get("branch", ""), s["metric"]["run"]): float(s["value"][1]) for s in series}
        if scraped == losses or time.monotonic() > deadline:
            break
        time.sleep(SCRAPE_SECONDS / 2)
    assert scraped == losses
