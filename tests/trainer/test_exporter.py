from __future__ import annotations

import socket
import urllib.request

import pytest

from mega3d.trainer.exporter import Endpoints, Exporter
from tests.observability.test_prometheus import free_ports


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_on_one_host_a_busy_port_moves_up_by_the_world_size(monkeypatch: pytest.MonkeyPatch) -> None:
    base = free_ports(4)
    monkeypatch.setenv("GROUP_RANK", "1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1))  # rank 1's first choice
        exporter = Exporter("study", "pretrain", 1, 2, Endpoints(base, one_host=True, pushgateway=None))
    assert exporter.port == base + 1 + 2
    exporter.record_step(seconds=0.5, waited=0.1, clips=8, loss=1.25)
    exporter.record_evaluation({"clip_accuracy": 0.5, "video_top1": 0.75, "video_top5": 1.0})
    text = scrape(base + 3)
    labels = 'experiment="study",node="1",rank="1",stage="pretrain"'  # exposition sorts label names
    assert f"mega3d_clips_total{{{labels}}} 8.0" in text
    assert f"mega3d_loss{{{labels}}} 1.25" in text
    accuracy = labels.replace(",node", ',kind="video_top1",node')
    assert f"mega3d_evaluation_accuracy{{{accuracy}}} 0.75" in text
    bucket = labels.replace(",node", ',le="0.1",node')
    assert f"mega3d_data_wait_seconds_bucket{{{bucket}}} 1.0" in text


def test_without_a_port_nothing_is_served() -> None:
    assert Exporter("study", "pretrain", 0, 1, Endpoints(None, one_host=False, pushgateway=None)).port is None
