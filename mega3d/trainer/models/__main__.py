"""Model tools that need torch, run by the torch-free CLI as `python -m mega3d.trainer.models COMMAND`.

    stats                      recompute trainer/model_stats.json (parameters and GFLOPs of every model)
    import SRC -o URI [--arch NAME] [--shortcut-type A|B]
                               convert a reference checkpoint (3D-ResNets-PyTorch .pth) into mega3d's format

Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mega3d.trainer import storage
from mega3d.trainer.checkpoint import save_checkpoint
from mega3d.trainer.model_catalog import STATS_CLASSES, STATS_CLIP, STATS_FILE, canonical_name, model_names
from mega3d.trainer.models import WeightsError, build_model, head_name, load_weights
from mega3d.trainer.models.weights import read_state, state_dict_of


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


def import_reference(source: str, output: str, arch: str | None, options: dict[str, Any]) -> str:
    if storage.exists(output):
        raise WeightsError(f"{output}: already exists; choose another output")
    state = read_state(source)
    name = canonical_name(arch or str(state.get("arch", "")))
    if name not in model_names():
        found = f"its arch is {state['arch']!r}" if "arch" in state else "it names no arch"
        raise WeightsError(f"{source}: {found}; pass --arch (one of: {', '.join(model_names())})")
    tensors = state_dict_of(state)
    with torch.device("meta"):
        head = head_name(build_model(name, 1, **options))
    if f"{head}.weight" not in tensors:
        raise WeightsError(f"{source}: no {head}.weight: not a {name} checkpoint")
    n_classes = int(tensors[f"{head}.weight"].shape[0])
    model = build_model(name, n_classes, **options)
    load_weights(model, tensors, where=f"{source} (as {name})")  # strict: every key and shape must fit
    save_checkpoint(
        output,
        {
            "epoch": int(state.get("epoch", 0)),
            "arch": name,
            "model_options": options,
            "n_classes": n_classes,
            "classes": None,
            "state_dict": model.state_dict(),
            "source": {"uri": source, "arch": state.get("arch"), "n_classes": n_classes},
        },
    )
    return f"imported {source} ({state.get('arch', name)}, {n_classes} classes) as {name} into {output}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mega3d.trainer.models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stats", help="recompute the parameter and GFLOPs table")
    convert = commands.add_parser("import", help="convert a reference checkpoint")
    convert.add_argument("source")
    convert.add_argument("-o", "--output", required=True)
    convert.add_argument("--arch")
    convert.add_argument("--shortcut-type", choices=["A", "B"])
    args = parser.parse_args(argv)

    if args.command == "stats":
        table = {name: model_stats(name) for name in model_names()}
        STATS_FILE.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {STATS_FILE} ({len(table)} models)")
        return
    options = {"shortcut_type": args.shortcut_type} if args.shortcut_type else {}
    try:
        print(import_reference(args.source, args.output, args.arch, options))
    except (WeightsError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
