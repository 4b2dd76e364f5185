"""The dataset catalog: `mega3d data publish | versions`, `--publish` on merge, subset and ingest, and
catalog names in specs resolved to versions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mega3d.trainer import catalog, storage
from mega3d.trainer.data.format import index_uri, load_index
from mega3d.trainer.data.synth import synthesize
from mega3d.trainer.spec import SpecError, SyntheticSpec, parse_spec
from tests.conftest import MEGA3D, mega3d


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Four small datasets that differ in content (their seeds)."""
    root = tmp_path_factory.mktemp("catalog-data")
    made = []
    for seed in range(4):
        uri = str(root / f"motion-{seed}")
        synthesize(uri, SyntheticSpec(classes=2, videos_per_class=4, frames=6, size=16, seed=seed))
        made.append(uri)
    return made


def test_publish_numbers_versions_and_versions_lists_them(tmp_path: Path, datasets: list[str]) -> None:
    root = str(tmp_path / "storage")
    first = mega3d("data", "publish", "motion", datasets[0], "--storage", root, "--made-from", "seed 0")
    assert first.returncode == 0, first.stderr
    assert "published motion@1" in first.stdout
    again = mega3d("data", "publish", "motion", datasets[0], "--storage", root)
    assert again.returncode == 0 and "motion@1 is this dataset already" in again.stdout
    second = mega3d("data", "publish", "motion", datasets[1], "--storage", root)
    assert second.returncode == 0 and "published motion@2" in second.stdout
    listed = mega3d("data", "versions", "motion", "--storage", root)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if datasets[0] in line or datasets[1] in line]
    assert len(rows) == 2 and "seed 0" in rows[0]
    found = catalog.versions(root, "motion")
    assert [(v.version, v.uri) for v in found] == [(1, datasets[0]), (2, datasets[1])]
    assert [v.fingerprint for v in found] == [load_index(index_uri(uri)).fingerprint for uri in datasets[:2]]
    assert catalog.resolve(root, "motion", "here").version == 2
    assert catalog.resolve(root, "motion@1", "here").uri == datasets[0]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_publishers_at_once_each_get_a_version_and_none_is_lost(
    tmp_path: Path, datasets: list[str], where: str, request: pytest.FixtureRequest
) -> None:
    root = str(tmp_path / "storage") if where == "local" else request.getfixturevalue("gcs_bucket") + "/race"
    publishers = [
        subprocess.Popen(
            [MEGA3D, "data", "publish", "merged", uri, "--storage", root],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for uri in datasets
    ]
    said = [publisher.communicate(timeout=60) for publisher in publishers]
    assert all(publisher.returncode == 0 for publisher in publishers), said
    found = catalog.versions(root, "merged")
    assert [version.version for version in found] == [1, 2, 3, 4]
    assert sorted(version.uri for version in found) == sorted(datasets)  # every publisher's, once
    for (stdout, _), uri in zip(said, datasets, strict=True):
        (taken,) = [v for v in found if v.uri == uri]
        assert f"published {taken.reference} " in stdout


def test_merge_subset_and_ingest_publish_their_result(tmp_path: Path, datasets: list[str]) -> None:
    root = str(tmp_path / "storage")
    merged = str(tmp_path / "merged")
    made = mega3d(
        "data", "merge", datasets[0], datasets[1], "-o", merged, "--publish", "km", "--storage", root
    )
    assert made.returncode == 0, made.stderr
    part = str(tmp_path / "part")
    cut = mega3d(
        "data", "subset", merged, "-o", part, "--categories", "0.5", "--publish", "km-half", "--storage", root
    )
    assert cut.returncode == 0, cut.stderr
    (km,) = catalog.versions(root, "km")
    (half,) = catalog.versions(root, "km-half")
    assert (km.uri, km.fingerprint) == (merged, load_index(index_uri(merged)).fingerprint)
    assert km.made_from == f"merge of {datasets[0]} + {datasets[1]}"
    assert half.uri == part and half.made_from.startswith(f"subset of {merged}: categories 0.5")
    source = tmp_path / "videos"
    source.mkdir()
    (source / "list.csv").write_text("missing.mp4,walk\n")
    ingested = mega3d(
        "data", "ingest", str(source), "--format", "csv", "--annotations", str(source / "list.csv"),
        "-o", str(tmp_path / "ingested"), "--publish", "km", "--workers", "1",
    )  # fmt: skip
    assert ingested.returncode == 2 and "--publish km: give --storage ROOT" in ingested.stderr
    assert not (tmp_path / "ingested").exists()  # refused before anything was written


def test_bad_names_versions_and_datasets_are_one_line_and_write_nothing(
    tmp_path: Path, datasets: list[str]
) -> None:
    root = tmp_path / "storage"
    assert mega3d("data", "publish", "motion", datasets[0], "--storage", str(root)).returncode == 0
    before = sorted(str(p) for p in root.rglob("*"))
    cases = [
        (("data", "publish", "motion", str(tmp_path / "none")), "no dataset there to publish"),
        (("data", "publish", "no/name", datasets[1]), "NAME: 'no/name' is not a catalog name"),
        (("data", "versions", "motoin"), "no dataset 'motoin' in the catalog at"),
        (("data", "subset", datasets[0], "-o", str(tmp_path / "s"), "--publish", "a b"), "not a catalog"),
    ]
    for args, message in cases:
        result = mega3d(*args, "--storage", str(root))
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "did you mean 'motion'?" in mega3d("data", "versions", "motoin", "--storage", str(root)).stderr
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert not (tmp_path / "s").exists()


def test_a_spec_names_catalog_datasets_and_a_run_pins_them(tmp_path: Path, datasets: list[str]) -> None:
    root = str(tmp_path / "storage")
    for uri in datasets[:2]:
        catalog.publish(root, "motion", uri)
    raw = {
        "name": "cat",
        "storage": root,
        "datasets": {"newest": {"catalog": "motion"}, "first": {"catalog": "motion@1"}},
        "pretrain": {"datasets": ["newest"], "epochs": 1},
        "finetune": [{"name": "tuned", "dataset": "first"}],
    }
    spec, resolved = catalog.resolve_spec(parse_spec(raw))
    assert {name: version.reference for name, version in resolved.items()} == {
        "newest": "motion@2",
        "first": "motion@1",
    }
    assert spec.dataset_uri("newest") == datasets[1] and spec.datasets["newest"].catalog == "motion@2"
    again, _ = catalog.resolve_spec(parse_spec(json.loads(spec.model_dump_json())))
    assert again == spec  # what a run keeps resolves to itself: the run can be repeated exactly
    storage.remove(storage.join(catalog.catalog_dir(root, "motion"), "1.json"))
    with pytest.raises(catalog.CatalogError, match=r"datasets\.first\.catalog: motion has no version 1 "):
        catalog.resolve_spec(parse_spec(raw))
    unknown = {**raw, "datasets": {**raw["datasets"], "first": {"catalog": "kinetics"}}}
    with pytest.raises(catalog.CatalogError, match=r"datasets\.first\.catalog: no dataset 'kinetics'"):
        catalog.resolve_spec(parse_spec(unknown))
    for dataset, message in [
        ({}, "give `uri` or `catalog`"),
        ({"catalog": "motion", "uri": "x"}, "not both"),
        ({"catalog": "motion@0"}, "catalog"),
        ({"catalog": "motion", "synthetic": {}}, "a catalog dataset is not synthesized"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_spec({**raw, "datasets": {**raw["datasets"], "first": dataset}})


def test_a_run_of_an_unknown_catalog_name_or_version_is_one_line_and_writes_nothing(
    tmp_path: Path, datasets: list[str]
) -> None:
    store = tmp_path / "store"
    catalog.publish(str(store), "motion", datasets[0])
    before = sorted(str(p) for p in store.rglob("*"))
    for reference, message in [
        ("motoin", "datasets.pre.catalog: no dataset 'motoin' in the catalog at"),
        ("motion@7", "datasets.pre.catalog: motion has no version 7 (its versions: 1)"),
    ]:
        spec = {
            "name": "cat",
            "storage": str(store),
            "datasets": {"pre": {"catalog": reference}},
            "pretrain": {"datasets": ["pre"], "epochs": 1},
            "finetune": [{"name": "tuned", "dataset": "pre"}],
        }
        (tmp_path / "spec.yaml").write_text(json.dumps(spec))
        result = mega3d("run", str(tmp_path / "spec.yaml"), "--run-id", "r1")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(str(p) for p in store.rglob("*")) == before  # no run directory, nothing else
