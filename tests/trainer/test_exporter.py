from __future__ import annotations

import socket
import urllib.request

import pytest
import torch

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
        exporter = Exporter(
            "study",
            "pretrain",
            1,
            2,
            Endpoints(base, one_host=True, pushgateway=None),
            branch="lr-0.1",
            run="r7",
        )
    assert exporter.port == base + 1 + 2
    exporter.record_step(seconds=0.5, waited=0.1, clips=8, loss=1.25)
    exporter.record_evaluation({"clip_accuracy": 0.5, "video_top1": 0.75, "video_top5": 1.0})
    text = scrape(base + 3)
    # The exposition sorts label names.
    labels = 'branch="lr-0.1",experiment="study",node="1",rank="1",run="r7",stage="pretrain"'
    assert f"mega3d_clips_total{{{labels}}} 8.0" in text
    assert f"mega3d_loss{{{labels}}} 1.25" in text
    accuracy = labels.replace(",node", ',kind="video_top1",node')
    assert f"mega3d_evaluation_accuracy{{{accuracy}}} 0.75" in text
    bucket = labels.replace(",node", ',le="0.1",node')
    assert f"mega3d_data_wait_seconds_bucket{{{bucket}}} 1.0" in text


def test_without_a_sweep_the_branch_label_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    base = free_ports(1)
    monkeypatch.setenv("GROUP_RANK", "0")
    exporter = Exporter(
        "study", "pretrain", 0, 1, Endpoints(base, one_host=True, pushgateway=None), branch="", run="r7"
    )
    assert exporter.port == base
    exporter.describe("r3d-10", "f" * 16)
    exporter.record_epoch(3, 0.01, torch.device("cpu"))
    text = scrape(base)
    labels = 'branch="",experiment="study",node="0",rank="0",run="r7",stage="pretrain"'
    assert f"mega3d_epoch{{{labels}}} 3.0" in text
    # The dashboard's branch and run variables are read from the info series.
    info = f'branch="",dataset_fingerprint="{"f" * 16}",experiment="study",model="r3d-10",node="0",rank="0"'
    assert f'mega3d_run_info{{{info},run="r7",stage="pretrain",version="' in text


def test_without_a_port_nothing_is_served() -> None:
    endpoints = Endpoints(None, one_host=False, pushgateway=None)
    assert Exporter("study", "pretrain", 0, 1, endpoints, branch="", run="r7").port is None
