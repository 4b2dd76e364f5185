"""Where the set-up time of a local run goes: `mega3d run` of a one-stage spec that trains for a second.

Two measurements, printed side by side:

    imports     what each kind of process imports before it does anything, in a fresh interpreter (best of
                --repeat): the CLI, the pipeline process (kfp and the pipeline's assembly), a step's body
                (mega3d.pipelines.tasks), torchrun, the trainer
    run         one `mega3d run` of a tiny spec (one fine-tune stage from scratch, one epoch on 12 videos):
                each step's wall time from the run's log (kfp.local's timestamps) next to the trainer's own
                `seconds` (set-up, training, evaluation), and the whole command's wall time

    .venv/bin/python bench/setup.py             # ~30 s on 2 cores
    .venv/bin/python bench/setup.py --repeat 1  # quicker, noisier import figures
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MEGA3D = Path(sys.executable).with_name("mega3d")
IMPORTS = {
    "python itself": "pass",
    "CLI (mega3d.cli.main)": "import mega3d.cli.main",
    "pipeline process (kfp + pipeline)": "import mega3d.pipelines.pipeline, kfp.local",
    "step body (mega3d.pipelines.tasks)": "import mega3d.pipelines.tasks",
    "torchrun (torch.distributed.run)": "import torch.distributed.run",
    "trainer (mega3d.trainer.train)": "import mega3d.trainer.train",
}
STAGE = "tuned"
SPEC = {
    "name": "setup",
    "storage": "store",
    "datasets": {
        "motion": {
            "uri": "datasets/motion",
            "synthetic": {"classes": 3, "videos_per_class": 4, "frames": 8, "size": 24, "seed": 1},
        }
    },
    "model": {"name": "r3d-10", "widen_factor": 0.125},
    "finetune": [
        {
            "name": STAGE,
            "dataset": "motion",
            "init_from": "scratch",
            "epochs": 1,
            "batch_size": 4,
            "num_workers": 0,
            "clip": {"frames": 4, "size": 16},
            "resources": {"nnodes": 1, "nproc_per_node": 1, "cpu": 1, "memory_gb": 1},
        }
    ],
}
KFP_TIME = re.compile(r"^(?P<clock>\d\d:\d\d:\d\d\.\d{3}) - [A-Z]+ - (?P<message>.*)$")
STARTS = re.compile(r"^Executing task '(?P<task>[^']+)'$")
ENDS = re.compile(r"^Task '(?P<task>[^']+)' finished with status")


def import_seconds(code: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        best = min(best, time.perf_counter() - started)
    return best


def step_seconds(log: Path) -> list[tuple[str, float]]:
    """(task, seconds) in the order the tasks ended, from kfp.local's timestamped lines."""
    started: dict[str, datetime.datetime] = {}
    steps = []
    for line in log.read_text().splitlines():
        stamped = KFP_TIME.match(line)
        if stamped is None:
            continue
        clock = datetime.datetime.strptime(stamped["clock"], "%H:%M:%S.%f")
        if (starts := STARTS.match(stamped["message"])) is not None:
            started[starts["task"]] = clock
        elif (ends := ENDS.match(stamped["message"])) is not None:
            steps.append((ends["task"], (clock - started.pop(ends["task"])).total_seconds()))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per import figure")
    args = parser.parse_args()

    imports = [(what, import_seconds(code, args.repeat)) for what, code in IMPORTS.items()]
    with tempfile.TemporaryDirectory(prefix="mega3d-setup-") as folder:
        spec = Path(folder, "setup.yaml")
        spec.write_text(yaml.safe_dump(SPEC))
        started = time.perf_counter()
        result = subprocess.run(
            [str(MEGA3D), "run", str(spec), "--run-id", "bench"], cwd=folder, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"mega3d run failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        run = Path(folder, "store", "experiments", "setup", "runs", "bench")
        steps = step_seconds(run / "run.log")
        trainer = {
            "finetune": json.loads((run / STAGE / "metrics.json").read_text())["seconds"],
            "evaluate": json.loads((run / STAGE / "evaluation" / "metrics.json").read_text())["seconds"],
        }
        shown_lines = len(result.stdout.splitlines()) + len(result.stderr.splitlines())

    rows = [(f"import: {what}", f"{seconds:6.2f}", "") for what, seconds in imports]
    rows += [
        (f"step: {task}", f"{seconds:6.2f}", f"{trainer[task]:6.2f}" if task in trainer else "")
        for task, seconds in steps
    ]
    rows.append(("mega3d run, whole command", f"{wall:6.2f}", f"{sum(trainer.values()):6.2f}"))
    rows.append(("set-up (whole command - trainer)", f"{wall - sum(trainer.values()):6.2f}", ""))
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'wall s':>6}  {'trainer s':>9}")
    for what, seconds, inside in rows:
        print(f"{what:{width}}  {seconds:>6}  {inside:>9}")
    print(f"lines `mega3d run` printed: {shown_lines}")


if __name__ == "__main__":
    main()
