"""The one object-storage facade: every read and write of datasets, checkpoints and metrics goes here.

URIs are anything fsspec understands (gs://, s3://, memory://, file://) or plain local paths.
Writes are all-or-nothing: a local file is written beside its target and renamed into place, and an
object-store put only becomes visible when complete, so a failed command never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shlex
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
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


OBJECT_STORES = ("gs", "gcs", "s3", "s3a", "az", "abfs")


def bucket_problem(uri: str) -> str | None:
    """Why an object-store URI cannot be used because its bucket does not exist (or these credentials
    cannot see it), in words; None where it exists, cannot be told, or `uri` is no object-store URI."""
    scheme, _, rest = uri.partition("://")
    if scheme not in OBJECT_STORES:
        return None
    bucket = rest.split("/", 1)[0]
    fs, _ = _fs(uri)
    try:
        if fs.exists(bucket):
            return None
    except OSError:
        return None  # cannot tell: say only what is certain
    return f"no bucket {bucket!r} (or these credentials cannot see it)"


@contextmanager
def _said_plainly(uri: str) -> Iterator[None]:
    """Object stores' "not found" as words naming the URI: gcsfs says only the request's URL (also when
    the bucket itself is missing)."""
    try:
        yield
    except FileNotFoundError as error:
        if uri.partition("://")[0] not in OBJECT_STORES:
            raise
        raise FileNotFoundError(f"{uri}: {bucket_problem(uri) or 'no such object'}") from error


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    with _said_plainly(uri):
        return bytes(fs.cat_file(path))


def read_range(uri: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object: one ranged GET on object stores."""
    fs, path = _fs(uri)
    with _said_plainly(uri):
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


@contextmanager
def _written_aside(path: str, data: bytes) -> Iterator[str]:
    """A local file of `data` beside `path`, on disk (fsynced), for the block to put into place; whatever
    the block leaves of it is removed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        yield partial
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem):
        with _written_aside(path, data) as partial:
            os.replace(partial, path)
    else:
        with _said_plainly(uri):
            fs.pipe_file(path, data)


def create_new(uri: str, data: bytes) -> bool:
    """Write `data` at `uri` only where nothing is there yet: False, writing nothing, where something is.
    Of two writers at once exactly one gets True: locally the whole file is written aside and hard-linked
    into place (a link never replaces a file, and readers never see half of it); on GCS the upload carries
    a generation-match precondition of 0."""
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem):
        with _written_aside(path, data) as partial:
            try:
                os.link(partial, path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: an exclusive create, written in place
                try:
                    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(descriptor, "wb") as out:
                    out.write(data)
        return True
    fs.invalidate_cache(path)
    if fs.exists(path):  # also where a store ignores the precondition
        return False
    try:
        with _said_plainly(uri):
            fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def copy(source: str, target: str) -> None:
    """Copy a file, all or nothing (as `write_bytes`), between any two stores."""
    write_bytes(target, read_bytes(source))


def json_bytes(value: Any) -> bytes:
    """How JSON files are written: indented, keys sorted."""
    return json.dumps(value, indent=1, sort_keys=True).encode()


def write_json(uri: str, value: Any) -> None:
    write_bytes(uri, json_bytes(value))


# ---- one writer at a time ------------------------------------------------------------------------------

HEARTBEAT_S = 30.0  # how often a holder rewrites its lock's heartbeat
STALE_AFTER_S = 600.0  # a lock whose heartbeat is older than this is taken over, whichever host holds it


class Locked(OSError):
    """Someone else holds the lock (or took it over from this process)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    started: float  # seconds since the epoch
    command: str
    token: str  # tells this holder's lock from a later one of the same process
    heartbeat: float

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"pid {self.pid} on {self.host}, since {started}: {self.command}"

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> LockHolder | None:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):  # half written, or not a lock of ours
            return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:  # a killed process its parent has not reaped yet still answers kill(0), but writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _why_stale(holder: LockHolder, now: float) -> str | None:
    """Why a lock may be taken over, or None while its holder may still be writing."""
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        return "its process is gone"
    if now - holder.heartbeat > STALE_AFTER_S:
        return f"no heartbeat for {now - holder.heartbeat:.0f} s"
    return None


class Lock:
    """A create-only lock file (`create_new`), so that of two writers starting together exactly one wins.
    While held, a thread refreshes its heartbeat; `check()` says whether it is still this process's."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs, self._path = _fs(uri)
        self._local = isinstance(self._fs, LocalFileSystem)
        command = shlex.join([os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]])
        now = time.time()
        self.holder = LockHolder(socket.gethostname(), os.getpid(), now, command, uuid.uuid4().hex, now)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, notice: Callable[[str], None]) -> None:
        """Take the lock, taking over a dead holder's (and saying so through `notice`); `Locked` when a
        live one holds it."""
        for _ in range(50):  # each round is lost only to another writer that changed the lock meanwhile
            if self._create():
                if self._read()[0] == self.holder:  # a store that ignores preconditions: last one wins
                    self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat", daemon=True)
                    self._beat.start()
                    return
                continue
            held, version = self._read()
            if held is None:  # released meanwhile, or being written by a writer that just created it
                time.sleep(0.05)
                continue
            reason = _why_stale(held, time.time())
            if reason is None:
                raise Locked(f"another command is writing there ({held.describe()})")
            if self._remove_if(held, version):
                notice(
                    f"took over the lock of a command that ended without releasing it ({reason}): "
                    f"{held.describe()}"
                )
        raise Locked(
            f"{self.uri}: cannot take the lock (it keeps changing, or is not a lock file this program "
            "wrote: delete it if no command is writing)"
        )

    def check(self) -> None:
        """Raise `Locked` unless the lock is still this process's (a writer that stalled past the
        heartbeat bound may have lost it to another)."""
        held, _ = self._read()
        if held is None or held.token != self.holder.token:
            raise Locked(
                "the lock was taken over by another command"
                + (f" ({held.describe()})" if held is not None else "")
            )

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        held, version = self._read()
        if held is not None and held.token == self.holder.token:
            self._remove_if(held, version)

    def _create(self) -> bool:
        return create_new(self.uri, self.holder.encode())

    def _read(self) -> tuple[LockHolder | None, object]:
        """The holder and a version of the lock file (None for both when there is none). On object stores
        the version is read before the content: a delete conditional on it removes nothing newer."""
        try:
            if self._local:
                return LockHolder.decode(Path(self._path).read_bytes()), True
            self._fs.invalidate_cache(self._path)
            version = self._fs.info(self._path).get("generation", True)
            return LockHolder.decode(bytes(self._fs.cat_file(self._path))), version
        except FileNotFoundError:
            return None, None

    def _remove_if(self, held: LockHolder, version: object) -> bool:
        """Delete the lock only if it is still `held`'s: True if this call removed it."""
        if self._local:
            # No conditional delete on POSIX: move it aside (only one mover gets a given file), then see
            # whose it was; a live holder's file is put back.
            aside = f"{self._path}.taken-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self._path, aside)
            except FileNotFoundError:
                return False
            moved = LockHolder.decode(Path(aside).read_bytes())
            if moved is None or moved.token != held.token:
                try:
                    os.link(aside, self._path)  # unless a third writer's lock is there by now
                except FileExistsError:
                    pass
                except OSError:  # a file system without hard links
                    os.rename(aside, self._path)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(aside)
                return False
            os.remove(aside)
            return True
        if not hasattr(self._fs, "call") or version is True:  # no generations: compare, then delete
            self._fs.rm_file(self._path)
            return True
        bucket, key, _ = self._fs.split_path(self._path)
        try:
            self._fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(version))
        except (FileExistsError, FileNotFoundError):  # 412: replaced since it was read; 404: gone
            return False
        self._fs.invalidate_cache(self._path)
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held, _ = self._read()
            if held is None or held.token != self.holder.token:
                return  # taken over: `check()` tells the writer
            self.holder = replace(self.holder, heartbeat=time.time())
            write_bytes(self.uri, self.holder.encode())


@contextmanager
def exclusive(uri: str, notice: Callable[[str], None] | None = None) -> Iterator[Lock]:
    """Hold the lock file `uri` for the block: `Locked` (one line naming the holder) when another live
    process holds it; a dead holder's lock is taken over."""
    lock = Lock(uri)
    lock.acquire(notice or logging.getLogger(__name__).warning)
    try:
        yield lock
    finally:
        lock.release()
