from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mega3d.trainer import storage


@pytest.mark.parametrize("root", ["local", "memory", "gcs"])
def test_round_trips(tmp_path: Path, root: str, request: pytest.FixtureRequest) -> None:
    base = {"local": str(tmp_path), "memory": "memory://mega3d-test"}.get(root) or request.getfixturevalue(
        "gcs_bucket"
    ) + "/round-trip"
    uri = storage.join(base, "a", "b.bin")
    storage.write_bytes(uri, b"0123456789")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"0123456789"
    assert storage.read_range(uri, 3, 7) == b"3456"
    storage.write_json(storage.join(base, "m.json"), {"x": [1, 2]})
    assert storage.read_json(storage.join(base, "m.json")) == {"x": [1, 2]}


def test_local_writes_leave_no_partial_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.bin"
    storage.write_bytes(str(target), b"first")
    storage.write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    storage.write_bytes(str(target), b"old")
    with pytest.raises(TypeError):
        storage.write_bytes(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_an_empty_uri_is_refused_rather_than_taken_for_the_root() -> None:
    with pytest.raises(ValueError, match="empty storage URI"):
        storage.join("", "index.json")


def test_relative_entries_resolve_against_their_directory() -> None:
    assert storage.resolve("gs://b/data", "shard-0.bin") == "gs://b/data/shard-0.bin"
    assert storage.resolve("gs://b/data", "gs://other/x.bin") == "gs://other/x.bin"
    assert storage.resolve("/data", "/abs/x.bin") == "/abs/x.bin"


@pytest.mark.parametrize("root", ["local", "gcs"])
def test_of_writers_creating_one_name_at_once_exactly_one_wins(
    tmp_path: Path, root: str, request: pytest.FixtureRequest
) -> None:
    base = str(tmp_path) if root == "local" else request.getfixturevalue("gcs_bucket") + "/create-new"
    uri = storage.join(base, "versions", "1.json")
    start = threading.Barrier(8)
    won: list[bytes] = []

    def create(writer: int) -> None:
        data = f"writer {writer}".encode()
        start.wait()
        if storage.create_new(uri, data):
            won.append(data)

    writers = [threading.Thread(target=create, args=(writer,)) for writer in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert len(won) == 1
    assert storage.read_bytes(uri) == won[0]
    assert not storage.create_new(uri, b"late")
    assert storage.read_bytes(uri) == won[0]
    assert storage.list_dir(storage.parent(uri)) == [uri]  # nothing written aside is left


def test_the_gcs_emulator_refuses_an_upload_whose_precondition_fails(gcs_bucket: str) -> None:
    # GCS answers 412 to `ifGenerationMatch=0` where the object exists (gcsfs: FileExistsError); the
    # emulator is made to do the same, so that create-only writes are tested as GCS runs them.
    import fsspec

    fs = fsspec.filesystem("gs", token="anon")
    path = f"{gcs_bucket.removeprefix('gs://')}/precondition/object"
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    assert fs.cat_file(path) == b"first"
