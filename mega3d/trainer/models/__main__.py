"""Model tools that need torch, run as `python -m mega3d.trainer.models COMMAND`.

    stats       recompute trainer/model_stats.json (parameters and GFLOPs of every model)

(Reference checkpoints are converted by `python -m mega3d.trainer.convert`, beside the other checkpoint code.)
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from mega3d.trainer.model_catalog import STATS_CLASSES, STATS_CLIP, STATS_FILE, model_names
from mega3d.trainer.models import build_model


def model_stats(name: str) -> dict[str, float]:
    """Parameters at 700 classes and GFLOPs (2 x multiply-adds) for one 3 x 16 x 112 x 112 clip."""
    with torch.device("meta"):
        model = build_model(name, STATS_CLASSES)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, *STATS_CLIP))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": round(counter.get_total_flops() / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mega3d.trainer.models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stats", help="recompute the parameter and GFLOPs table")
    parser.parse_args(argv)
    table = {name: model_stats(name) for name in model_names()}
    STATS_FILE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {STATS_FILE} ({len(table)} models)")


if __name__ == "__main__":
    main()
