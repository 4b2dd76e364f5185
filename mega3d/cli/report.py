"""`mega3d report`: the paper's tables and figures from finished runs; `mega3d.report.study` does the
work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mega3d.cli.console import DATA_ERRORS, fail, out


def report(
    run_roots: Annotated[
        list[str],
        typer.Argument(
            help="Run directories, <storage>/experiments/<name>/runs/<run id> (paths or URIs); where two "
            "runs have the same pretraining and architecture, the later one's results are shown.",
            show_default=False,
            metavar="RUN_ROOT",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Directory for the report (created; its report files replaced)."),
    ],
) -> None:
    """Tables and figures of the paper from finished runs: table.md and table.csv (Table 2/3), accuracy vs
    depth, vs categories and vs instances (Fig. 1/3/4), best and worst classes per target (Fig. 5), and
    index.html showing them all. Missing results are gaps."""
    from mega3d.report import study

    roots = list(dict.fromkeys(reversed(run_roots)))[::-1]  # a root given twice counts where it is last
    problems = (
        [f"--output {output}: is a file, not a directory"] if output.exists() and not output.is_dir() else []
    )
    for root in roots:
        try:
            problem = study.run_root_problem(root)
        except DATA_ERRORS as error:
            problem = f"{root}: {error}"
        problems += [problem] if problem else []
    if problems:
        fail(problems)
    runs = []
    for root in roots:
        try:
            run = study.read_run(root)
        except DATA_ERRORS as error:  # StudyError is a ValueError: it names the file
            fail([str(error) if isinstance(error, study.StudyError) else f"{root}: {error}"])
        out.print(
            f"read {run.name} ({root}): {len(run.rows)} of {run.branches} branches with results, "
            f"{len(run.missing)} metrics files missing",
            soft_wrap=True,
        )
        runs.append(run)
    try:
        written = study.write_report(study.build_report(runs), output)
    except OSError as error:
        fail([f"--output {output}: {error}"], code=1)
    out.print(f"wrote {output}: {', '.join(written.files)}", soft_wrap=True)
    for name, why in written.not_drawn.items():
        out.print(f"not drawn: {name} ({why})", soft_wrap=True)
