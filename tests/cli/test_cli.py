from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

from mega3d.trainer.data.format import index_uri, load_index
from tests.conftest import QUICKSTART, mega3d


def test_cli_path_never_imports_torch(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mega3d.cli.main import app\n"
        f"for args in (['--help'], ['validate', {str(QUICKSTART)!r}], ['models', 'list'],\n"
        f"             ['compile', {str(QUICKSTART)!r}, '-o', {str(tmp_path / 'p.yaml')!r}],\n"
        f"             ['data', 'synth', {str(tmp_path / 'ds')!r}, '--videos-per-class', '2']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "import mega3d.pipelines.local, mega3d.pipelines.tasks\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_is_quick() -> None:
    started = time.monotonic()
    result = mega3d("--help")
    assert result.returncode == 0 and "compile" in result.stdout and "run" in result.stdout
    assert time.monotonic() - started < 5  # generous for a loaded CI machine; ~0.5 s when idle


def test_synth_writes_and_never_overwrites(tmp_path: Path) -> None:
    uri = str(tmp_path / "motion")
    result = mega3d(
        "data",
        "synth",
        uri,
        "--classes",
        "3",
        "--videos-per-class",
        "4",
        "--size",
        "16",
        "--frames",
        "6",
        "--seed",
        "5",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 12 videos of 3 classes" in result.stdout
    index = load_index(index_uri(uri))
    assert len(index.classes) == 3 and len(index) == 12
    before = {p.name: p.read_bytes() for p in (tmp_path / "motion").iterdir()}

    again = mega3d("data", "synth", uri, "--classes", "5")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "motion").iterdir()} == before


def test_synth_rejects_uris_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for uri, message in (
        ("", "empty storage URI"),
        ("nosuch://bucket/x", "Protocol not known"),
        (str(blocker / "ds"), "Not a directory"),
    ):
        result = mega3d("data", "synth", uri, "--videos-per-class", "2", "--size", "16")
        assert result.returncode == 2, uri
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_synth_rejects_bad_options(tmp_path: Path) -> None:
    result = mega3d("data", "synth", str(tmp_path / "x"), "--classes", "0", "--size", "4")
    assert result.returncode == 2
    assert (
        result.stderr.count("error: --") == 2 and "--classes" in result.stderr and "--size" in result.stderr
    )
    assert not (tmp_path / "x").exists()


def test_run_refuses_a_run_id_that_is_not_a_plain_name(tmp_path: Path) -> None:
    result = mega3d("run", str(QUICKSTART), "--run-id", "../../elsewhere", cwd=tmp_path)
    assert result.returncode == 2 and "--run-id '../../elsewhere'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_missing_datasets_before_starting(tmp_path: Path) -> None:
    data = yaml.safe_load(QUICKSTART.read_text())
    del data["datasets"]["motion-c"]["synthetic"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    result = mega3d("run", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        f"{spec}: datasets.motion-c.uri: no dataset at {tmp_path}/runs/quickstart/datasets/motion-c"
        in result.stderr
    )
    assert not (tmp_path / "runs" / "quickstart" / "experiments").exists()
