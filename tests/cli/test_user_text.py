"""User text is printed as text: file names, dataset keys, class names and run names that look like rich
markup (`[/b]`, `[bold]x[/bold]`) neither break a command nor change what it says."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mega3d.cli.main import app
from mega3d.trainer.data.format import index_uri, load_index, save_index
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.spec import SyntheticSpec
from tests.cli.test_ingest import ingest_args
from tests.cli.test_predict import real_video
from tests.conftest import QUICKSTART, mega3d
from tests.kfp_api import KfpApi, kfp_api

# Each would be markup to rich: a closing tag with no opening one raises MarkupError, a pair styles text.
CLOSING = "[/b]"
STYLED = "[bold]x[/bold]"
EVIL_CLASS = "[/evil]"


def quickstart_with(tmp_path: Path, name: str, storage: str = "store", **changes: object) -> Path:
    data = yaml.safe_load(QUICKSTART.read_text())
    data.update(changes)
    data["storage"] = str(tmp_path / storage)
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)  # `spec[/b].yaml` is `b].yaml` in a folder `spec[`
    path.write_text(yaml.safe_dump(data))
    return path


def dataset_with_markup_classes(tmp_path: Path) -> str:
    uri = str(tmp_path / f"data{CLOSING}")
    synthesize(uri, SyntheticSpec(classes=2, videos_per_class=2, frames=4, size=16, seed=1))
    index = load_index(index_uri(uri))
    save_index(index_uri(uri), dataclasses.replace(index, classes=[EVIL_CLASS, STYLED]))
    return uri


Case = Callable[[Path], tuple[list[str], list[str]]]


def valid_spec(tmp_path: Path) -> tuple[list[str], list[str]]:
    spec = quickstart_with(tmp_path, f"spec{CLOSING}.yaml", storage=f"store{STYLED}")
    return ["validate", str(spec)], [f"store{STYLED}"]


def invalid_spec(tmp_path: Path) -> tuple[list[str], list[str]]:
    spec = quickstart_with(tmp_path, f"{STYLED}.yaml", epochs_typo=1)
    return ["validate", str(spec)], [f"{STYLED}.yaml"]


def unknown_dataset_key(tmp_path: Path) -> tuple[list[str], list[str]]:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["pretrain"]["datasets"] = [EVIL_CLASS]
    spec = quickstart_with(tmp_path, "keys.yaml", pretrain=data["pretrain"])
    return ["validate", str(spec)], [f"'{EVIL_CLASS}'"]


def compiled(tmp_path: Path) -> tuple[list[str], list[str]]:
    spec = quickstart_with(tmp_path, "spec.yaml")
    output = tmp_path / f"pipeline{STYLED}.yaml"
    output.parent.mkdir(parents=True)
    return ["compile", str(spec), "-o", str(output)], [str(output)]


def synthesized(tmp_path: Path) -> tuple[list[str], list[str]]:
    uri = str(tmp_path / f"motion{CLOSING}")
    words = ["--classes", "2", "--videos-per-class", "2", "--frames", "4", "--size", "16"]
    return ["data", "synth", uri, *words], [uri]


def stats(tmp_path: Path) -> tuple[list[str], list[str]]:
    return ["data", "stats", dataset_with_markup_classes(tmp_path)], [EVIL_CLASS, STYLED, CLOSING]


def ingested(tmp_path: Path) -> tuple[list[str], list[str]]:
    """A real video at `clip[/x].mp4` of a class `[red]walk`, and a broken one, listed by its name."""
    videos = tmp_path / "videos"
    (videos / "clip[").mkdir(parents=True)
    (videos / "clip[" / "x].mp4").symlink_to(real_video())
    (videos / "broken[" / "b].mp4").parent.mkdir()
    (videos / "broken[" / "b].mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    listing = tmp_path / "list.csv"
    listing.write_text("clip[/x].mp4,[red]walk\nbroken[/b].mp4,[red]walk\n")
    words = ingest_args(videos, "csv", listing, tmp_path / "out", "--short-side", "32")
    return words, ["1 unreadable (listed in the index's errors): broken[/b].mp4: "]


CASES: dict[str, Case] = {
    "validate: a spec file and storage named like markup": valid_spec,
    "validate: an invalid spec file named with a styled pair": invalid_spec,
    "validate: a dataset key like a closing tag": unknown_dataset_key,
    "compile: an output file named with a styled pair": compiled,
    "data synth: a dataset folder with a closing tag": synthesized,
    "data stats: class names like markup": stats,
    "data ingest: video files and classes like markup": ingested,
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_user_text_is_printed_as_it_is(tmp_path: Path, case: Case) -> None:
    words, expected = case(tmp_path)
    result = mega3d(*words, timeout=120)
    printed = result.stdout + result.stderr
    assert "Traceback" not in printed and "MarkupError" not in printed, printed
    for text in expected:
        assert text in printed, printed


@pytest.fixture
def server() -> Iterator[KfpApi]:
    with kfp_api() as api:
        yield api


def test_run_names_from_the_server_are_printed_as_they_are(server: KfpApi, tmp_path: Path) -> None:
    name = f"{STYLED}{CLOSING}"
    run_id = server.add_run(name, states=["RUNNING"], experiment_id=server.add_experiment("mega3d"))
    settings = tmp_path / "settings.yaml"
    settings.write_text("bucket: gs://team/mega3d\n")
    connection = ["--host", server.url, "--settings", str(settings)]
    status = CliRunner().invoke(app, ["runs", "status", run_id, *connection])
    assert status.exit_code == 0 and f"({name}): RUNNING" in status.output, status.output
    listed = CliRunner().invoke(app, ["runs", "list", *connection], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and name in listed.output, listed.output
