"""Convert a reference checkpoint (3D-ResNets-PyTorch .pth) into mega3d's format, checking that every tensor
fits the architecture. The torch-free CLI (`mega3d models import`) runs this in a subprocess:

    python -m mega3d.trainer.convert SOURCE -o URI [--arch NAME] [--shortcut-type A|B]

Errors are one line on stderr with exit code 2. A source whose SHA-256 mega3d recorded beside it is checked
against it; the output gets one (`checkpoint.hash_uri`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from mega3d.trainer import storage
from mega3d.trainer.checkpoint import (
    CheckpointError,
    CheckpointHeader,
    ImportedFrom,
    load_checkpoint,
    save_checkpoint,
)
from mega3d.trainer.model_catalog import canonical_name, model_names, unknown_model
from mega3d.trainer.models import WeightsError, build_model, head_name, load_weights
from mega3d.trainer.models.weights import state_dict_of


def import_reference(source: str, output: str, arch: str | None, options: dict[str, Any]) -> str:
    """Write `source` as a mega3d checkpoint at `output`; returns what was done, in a sentence."""
    if storage.exists(output):
        raise WeightsError(f"{output}: already exists; choose another output")
    state = load_checkpoint(source)
    found = CheckpointHeader.of(state, source)
    name = canonical_name(arch or found.arch or "")
    if arch is not None and name not in model_names():
        raise WeightsError(f"--arch: {unknown_model(arch)}")
    if name not in model_names():
        said = f"its arch is {found.arch!r}" if found.arch else "it names no arch"
        raise WeightsError(f"{source}: {said}; pass --arch (one of: {', '.join(model_names())})")
    tensors = state_dict_of(state)
    with torch.device("meta"):
        head = head_name(build_model(name, 1, **options))
    if f"{head}.weight" not in tensors:
        raise WeightsError(f"{source}: no {head}.weight: not a {name} checkpoint")
    n_classes = int(tensors[f"{head}.weight"].shape[0])
    model = build_model(name, n_classes, **options)
    load_weights(model, tensors, where=f"{source} (as {name})")  # strict: every key and shape must fit
    header = CheckpointHeader(
        epoch=found.epoch,
        arch=name,
        model_options=options,
        n_classes=n_classes,
        source=ImportedFrom(uri=source, arch=found.arch, n_classes=n_classes),
    )
    save_checkpoint(output, header, {"state_dict": model.state_dict()})
    return f"imported {source} ({found.arch or name}, {n_classes} classes) as {name} into {output}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mega3d.trainer.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--arch")
    parser.add_argument("--shortcut-type", choices=["A", "B"])
    args = parser.parse_args(argv)
    options = {"shortcut_type": args.shortcut_type} if args.shortcut_type else {}
    try:
        print(import_reference(args.source, args.output, args.arch, options))
    except (WeightsError, CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
