"""Loading weights into a model from any checkpoint layout users bring.

Accepted: the reference implementation's files (`{"state_dict", "arch", ...}`, with or without the
`module.` prefix DataParallel adds), a bare state_dict, and mega3d's own checkpoints. Files are read with
`weights_only=True`: one that carries code or arbitrary objects is refused before anything runs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mega3d.trainer import storage

SHOWN_KEYS = 6


class WeightsError(ValueError):
    pass


Source = str | os.PathLike[str] | Mapping[str, Any]
# Added to BatchNorm in PyTorch 0.4.1: older reference files lack it, and a missing one is harmless.
OPTIONAL_SUFFIX = ".num_batches_tracked"


def _reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line]  # what the unpickler refused, e.g. posix.system
    return (named or lines or [type(error).__name__])[0]


def read_state(source: Source) -> dict[str, Any]:
    """A checkpoint's top-level mapping, from a path/URI or as given."""
    if isinstance(source, Mapping):
        return dict(source)
    uri = os.fspath(source)
    return parse_state(storage.read_bytes(uri), uri)


def parse_state(data: bytes, where: str) -> dict[str, Any]:
    """A checkpoint's top-level mapping from its bytes, unpickling plain tensors and containers only."""
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises many kinds on bad bytes; all mean "not a checkpoint"
        raise WeightsError(
            f"{where}: refused: not a checkpoint of plain tensors ({_reason(error)})"
        ) from None
    if not isinstance(loaded, dict):
        raise WeightsError(f"{where}: expected a mapping at the top level, found {type(loaded).__name__}")
    return loaded


def state_dict_of(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (reference, mega3d or bare), without DataParallel's `module.` prefixes."""
    weights = state["state_dict"] if isinstance(state.get("state_dict"), Mapping) else state
    tensors: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        if isinstance(value, torch.Tensor):
            name = key.removeprefix("module.")
            if name in tensors:
                raise WeightsError(f"both {name} and module.{name} are in the checkpoint")
            tensors[name] = value
    if not tensors:
        raise WeightsError("no tensors found: expected a state_dict or a checkpoint with one")
    return tensors


def head_name(model: nn.Module) -> str:
    """The classification head: the last Linear layer (`fc` for ResNets, `classifier` for DenseNets)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise WeightsError(f"{type(model).__name__} has no Linear head")
    return linears[-1]


def _listing(title: str, keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"{title} ({len(keys)}): {', '.join(keys[:SHOWN_KEYS])}{more}"


def _hints(missing: list[str], unexpected: list[str], misshaped: list[str], head: str) -> list[str]:
    hints = []
    if any(key.endswith(".downsample.0.weight") for key in unexpected):
        hints.append("the checkpoint has type-B shortcuts (downsample convolutions): use shortcut_type B")
    if any(key.endswith(".downsample.0.weight") for key in missing):
        hints.append("the checkpoint has type-A shortcuts (no downsample weights): use shortcut_type A")
    if misshaped and all(key.startswith(f"{head}.") for key in misshaped):
        hints.append(
            "only the head differs in size: fine-tuning on other classes replaces it (new_head=True)"
        )
    return hints


def load_weights(
    model: nn.Module, source: Source, *, strict: bool = True, new_head: bool = False, where: str | None = None
) -> None:
    """Copy weights into `model` from a path/URI or a loaded checkpoint.

    With `new_head`, the head keeps its fresh initialisation (fine-tuning on another label space). With
    `strict`, any missing, unexpected or mis-shaped key is an error that lists them; otherwise only the
    matching tensors are copied. `where` names the source in errors when it is given as a loaded mapping.
    """
    loaded = state_dict_of(read_state(source))
    expected = model.state_dict()
    head = head_name(model)
    if new_head:
        loaded = {key: value for key, value in loaded.items() if not key.startswith(f"{head}.")}
    missing = [
        key
        for key in expected
        if key not in loaded
        and not key.endswith(OPTIONAL_SUFFIX)
        and not (new_head and key.startswith(f"{head}."))
    ]
    unexpected = [key for key in loaded if key not in expected]
    misshaped = [key for key in loaded if key in expected and loaded[key].shape != expected[key].shape]
    if strict and (missing or unexpected or misshaped):
        where = where or ("the given state" if isinstance(source, Mapping) else os.fspath(source))
        parts = [
            _listing("missing", missing) if missing else "",
            _listing("unexpected", unexpected) if unexpected else "",
            _listing(
                "mis-shaped",
                [f"{k} {tuple(loaded[k].shape)} vs {tuple(expected[k].shape)}" for k in misshaped],
            )
            if misshaped
            else "",
        ]
        message = "; ".join(part for part in parts if part)
        hints = "; ".join(_hints(missing, unexpected, misshaped, head))
        raise WeightsError(
            f"{where} does not fit {type(model).__name__}: {message}" + (f". Hint: {hints}" if hints else "")
        )
    model.load_state_dict(
        {key: value for key, value in loaded.items() if key in expected and key not in misshaped},
        strict=False,
    )
