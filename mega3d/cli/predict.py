"""`mega3d predict`: the action in one's own video, from a trained mega3d checkpoint.

The work (PyAV decoding, the model) runs in `python -m mega3d.trainer.predict`, a subprocess, so that the CLI
process never imports torch; this module only renders what it prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from mega3d.cli.console import fail, out, shown
from mega3d.trainer.records import Prediction


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def run_predict(command: list[str]) -> Prediction:
    """The JSON object `python -m mega3d.trainer.predict` prints; its bad-input line ends the command
    (exit 2), anything else it does wrong is an internal error (exit 1)."""
    result = subprocess.run(
        [sys.executable, "-m", "mega3d.trainer.predict", *command], capture_output=True, text=True
    )
    last_line = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    if result.returncode == 2 and "Traceback" not in result.stderr:
        fail([last_line.removeprefix("error: ")])
    if result.returncode != 0:
        fail(
            [f"internal error in `python -m mega3d.trainer.predict` (exit {result.returncode}): {last_line}"],
            1,
        )
    try:
        last = (result.stdout.strip().splitlines() or [""])[-1]
        # NaN, which json.loads takes by default, would pass on as a score: it is no JSON, nor a probability
        return Prediction.parse(json.loads(last, parse_constant=_not_json), "stdout")
    except ValueError:  # not JSON, or not a prediction (RecordError)
        fail(
            [
                "internal error: `python -m mega3d.trainer.predict` printed no prediction: "
                f"{result.stdout[:200]!r}"
            ],
            1,
        )


def predict(
    video: Annotated[
        Path,
        typer.Argument(help="A video file PyAV can decode (mp4, avi, webm, mkv, ...).", show_default=False),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="A mega3d checkpoint (path or fsspec URI) trained or fine-tuned on labelled videos.",
            show_default=False,
        ),
    ],
    top: Annotated[int, typer.Option(min=1, help="How many classes to list.")] = 5,
    json_output: Annotated[
        bool,
        typer.Option(
            "--json", help='Print one JSON object instead: {"video", "windows", "top": [{"label", "score"}]}.'
        ),
    ] = False,
    frames: Annotated[
        int | None,
        typer.Option(min=1, help="Frames per window; default: the clip length the model was trained on."),
    ] = None,
    size: Annotated[
        int | None, typer.Option(min=1, help="Side of the model's input; default: as it was trained.")
    ] = None,
    short_side: Annotated[
        int,
        typer.Option(
            min=1, help="Scale frames down to this short side first, as `mega3d data ingest` stored them."
        ),
    ] = 128,
) -> None:
    """Predict the action in a video: non-overlapping windows, centre-cropped as in evaluation, and their
    class probabilities averaged (the paper's video-level prediction)."""
    command = [str(video), "--model", model, "--top", str(top), "--short-side", str(short_side)]
    command += ["--frames", str(frames)] if frames else []
    command += ["--size", str(size)] if size else []
    answer = run_predict(command)
    if json_output:
        typer.echo(json.dumps(answer.to_json(), allow_nan=False))
        return
    from rich.table import Table

    out.print(f"[bold]{shown(answer.video)}[/bold]", markup=True, soft_wrap=True)
    table = Table()
    table.add_column("rank", justify="right")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for rank, entry in enumerate(answer.top, 1):
        table.add_row(str(rank), entry.label, f"{100 * entry.score:.2f}%")
    out.print(table)
    seen = f"{answer.frames} frames, {answer.seconds:.1f} s"
    out.print(
        f"averaged over {answer.windows} windows of {answer.window_frames} frames ({seen}); "
        f"model {answer.arch} from {answer.model}",
        soft_wrap=True,
    )
