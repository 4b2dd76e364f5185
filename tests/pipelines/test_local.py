from __future__ import annotations

import io
import threading

from mega3d.pipelines.local import ExecutorLogFilter


def test_dumps_of_steps_running_side_by_side_are_all_dropped() -> None:
    """ParallelFor steps write from their own threads, with their own indentation."""

    def step_output(indent: str, name: str) -> list[str]:
        return [
            f"{indent}[KFP Executor 2026-01-01 INFO]: Got executor_input:\n",
            f"{indent}{{\n",
            f'{indent}    "inputs": {{\n',
            f'{indent}        "stage": "{name}"\n',
            f"{indent}    }}\n",
            f"{indent}}}\n",
            f"{indent}{name} trains\n",
        ]

    target = io.StringIO()
    writer = ExecutorLogFilter(target)  # type: ignore[arg-type]
    barrier = threading.Barrier(2)

    def run(indent: str, name: str) -> None:
        for piece in step_output(indent, name):
            barrier.wait()  # the two steps' lines interleave
            writer.write(piece)

    threads = [threading.Thread(target=run, args=args) for args in (("    ", "a"), ("        ", "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(target.getvalue().splitlines()) == ["        b trains", "    a trains"]
