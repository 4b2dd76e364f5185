"""What the tests and the benchmarks share (as numpy.testing): the GCS JSON API on a loopback port.

It lives in the package rather than in tests/ so that bench/ does not depend on the test suite; mega3d itself
never imports it. The emulator is gcp-storage-emulator of the `dev` extra, started as a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def _serve_emulator(keep_alive: bool) -> None:
    """The emulator's own main, behaving as GCS does where mega3d relies on it.

    GCS honours `ifGenerationMatch` on uploads and deletes (https://cloud.google.com/storage/docs/
    request-preconditions): `0` on an upload succeeds only where no live object has the name, else 412
    Precondition Failed; a generation on a delete removes only that generation. gcp-storage-emulator
    ignores both; here its upload and delete handlers check them first. (It serves one request at a time,
    so a check and the write after it are not interleaved with another request.)"""
    from http import HTTPStatus
    from typing import Any

    from gcp_storage_emulator import server
    from gcp_storage_emulator.__main__ import main
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def generation(storage: Any, bucket: str, name: str) -> str | None:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return None

    def refused(response: Any, name: str) -> None:
        response.status = HTTPStatus.PRECONDITION_FAILED
        message = f"At least one of the pre-conditions you specified did not hold ({name})."
        response.json({"error": {"code": 412, "message": message, "errors": [{"reason": "conditionNotMet"}]}})

    def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = request.query.get("ifGenerationMatch", [None])[0]
        if wanted is not None and "upload_id" not in request.query:
            uploaded = request.query.get("uploadType", [""])[0]
            meta = request.data.get("meta") if uploaded == "multipart" else request.data
            name = str(request.query.get("name", [None])[0] or (meta or {}).get("name"))
            current = generation(storage, request.params["bucket_name"], name)
            if current != (None if wanted == "0" else wanted):
                return refused(response, name)
        return upload(request, response, storage, *args, **kwargs)

    def delete(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = request.query.get("ifGenerationMatch", [None])[0]
        name = request.params["object_id"]
        if wanted is not None and generation(storage, request.params["bucket_name"], name) != wanted:
            return refused(response, name)
        return remove(request, response, storage, *args, **kwargs)

    upload, remove = objects.insert, objects.delete
    objects.insert, objects.delete = insert, delete
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            handlers[method] = {upload: insert, remove: delete}.get(handler, handler)
    if keep_alive:
        server.RequestHandler.protocol_version = "HTTP/1.1"
    sys.exit(main())


@contextmanager
def gcs_emulator(keep_alive: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """gcp-storage-emulator (in memory, bucket `mega3d`) on a loopback port, with the environment pointing
    gcsfs at it; stopped on the way out, whatever happens.

    The emulator answers in HTTP/1.0 and so closes the connection after every response; with `keep_alive`
    its request handler speaks HTTP/1.1 (its responses carry Content-Length), so that connections are kept
    and reused as with GCS itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    main = f"from mega3d.testing import _serve_emulator; _serve_emulator({keep_alive})"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            main,
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
            "--default-bucket=mega3d",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {
        key: os.environ.get(key) for key in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/storage/v1/b/mega3d", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.2)
        # Without the second variable gcsfs probes every bucket over gRPC for a minute first.
        os.environ.update(STORAGE_EMULATOR_HOST=endpoint, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
