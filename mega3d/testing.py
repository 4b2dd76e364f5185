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
from pathlib import Path

KEEP_ALIVE_MAIN = (
    "import sys; from gcp_storage_emulator import server; from gcp_storage_emulator.__main__ import main; "
    "server.RequestHandler.protocol_version = 'HTTP/1.1'; sys.exit(main())"
)


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
    emulator = [str(Path(sys.executable).with_name("gcp-storage-emulator"))]
    if keep_alive:
        emulator = [sys.executable, "-c", KEEP_ALIVE_MAIN]
    server = subprocess.Popen(
        [
            *emulator,
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
