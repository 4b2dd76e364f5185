"""The one object-storage facade: every read and write of datasets, checkpoints and metrics goes here.

URIs are anything fsspec understands (gs://, s3://, memory://, file://) or plain local paths.
Writes are all-or-nothing: a local file is written beside its target and renamed into place, and an
object-store put only becomes visible when complete, so a failed command never leaves half a file.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def join(root: str, *parts: str) -> str:
    if not root:
        raise ValueError("empty storage URI")
    return posixpath.join(root.rstrip("/") or "/", *parts)


def is_absolute(uri: str) -> bool:
    return "://" in uri or uri.startswith("/")


def resolve(base_dir: str, uri: str) -> str:
    """`uri` as written inside a file that lives in `base_dir` (relative entries are relative to it)."""
    return uri if is_absolute(uri) else join(base_dir, uri)


def parent(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/"))


def local_absolute(uri: str) -> str:
    """Turn a relative local path into an absolute one; other URIs are returned unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    options = {}
    if uri.startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
        # An emulator takes no credentials: do not go looking for any (metadata server, gcloud files).
        options["token"] = "anon"
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return fs, path


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return bool(fs.exists(path))


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    return bytes(fs.cat_file(path))


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object: one ranged GET on object stores."""
    fs, path = _fs(uri)
    return bytes(fs.cat_file(path, start=start, end=end))


class RangeReader:
    """Ranged reads of one object. The filesystem is resolved once per process (a DataLoader worker gets
    its own), so its connections are kept and reused from one read to the next."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._pid = -1

    def read(self, start: int, end: int) -> bytes:
        if self._pid != os.getpid():
            self._fs, self._path = _fs(self.uri)
            self._pid = os.getpid()
        return bytes(self._fs.cat_file(self._path, start=start, end=end))


def list_dir(uri: str) -> list[str]:
    """URIs of the files directly under a directory (none if it does not exist), sorted."""
    fs, path = _fs(uri)
    fs.invalidate_cache(path)  # object-store listings are cached; other processes may have written since
    if not fs.exists(path):
        return []
    return sorted(join(uri, posixpath.basename(entry.rstrip("/"))) for entry in fs.ls(path, detail=False))


def remove(uri: str) -> None:
    """Delete a file, or a directory and all it holds; nothing happens if it does not exist."""
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
        try:
            with open(partial, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    else:
        fs.pipe_file(path, data)


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json.dumps(value, indent=1, sort_keys=True).encode())
