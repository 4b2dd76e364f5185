"""Loading weights into a model from any checkpoint layout users bring.

Accepted: the reference implementation's files (`{"state_dict", "arch", ...}`, with or without the
`module.` prefix DataParallel adds), a bare state_dict, and mega3d's own checkpoints. Files are read with
`weights_only=True`: one that carries code or arbitrary objects is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from trainer import storage

SHOWN_KEYS = 6


class WeightsError(ValueError):
    pass


def read_state(source: str | Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's top-level mapping, from a path/URI or as given."""
    if not isinstance(source, str):
        return dict(source)
    try:
        loaded = torch.load(io.BytesIO(storage.read_bytes(source)), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = str(error).strip().splitlines()[0]
        raise WeightsError(f"{source}: refused: not a checkpoint of plain tensors ({reason})") from None
    if not isinstance(loaded, dict):
        raise WeightsError(f"{source}: expected a mapping at the top level, found {type(loaded).__name__}")
    return loaded


def state_dict_of(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint (reference, mega3d or bare), without a DataParallel `module.` prefix."""
    weights = state["state_dict"] if isinstance(state.get("state_dict"), Mapping) else state
    tensors = {key: value for key, value in weights.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise WeightsError("no tensors found: expected a state_dict or a checkpoint with one")
    if all(key.startswith("module.") for key in tensors):
        tensors = {key.removeprefix("module."): value for key, value in tensors.items()}
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
    if any(".downsample." in key for key in unexpected):
        hints.append(
            "the checkpoint has type-B shortcuts (downsample convolutions): build with shortcut_type='B'"
        )
    if any(".downsample." in key for key in missing):
        hints.append(
            "the checkpoint has type-A shortcuts (no downsample weights): build with shortcut_type='A'"
        )
    if misshaped and all(key.startswith(f"{head}.") for key in misshaped):
        hints.append(
            "only the head differs in size: fine-tuning on other classes replaces it (new_head=True)"
        )
    return hints


def load_weights(
    model: nn.Module, source: str | Mapping[str, Any], *, strict: bool = True, new_head: bool = False
) -> None:
    """Copy weights into `model`.

    With `new_head`, the head keeps its fresh initialisation (fine-tuning on another label space). With
    `strict`, any missing, unexpected or mis-shaped key is an error that lists them; otherwise only the
    matching tensors are copied.
    """
    loaded = state_dict_of(read_state(source))
    expected = model.state_dict()
    head = head_name(model)
    if new_head:
        loaded = {key: value for key, value in loaded.items() if not key.startswith(f"{head}.")}
    missing = [key for key in expected if key not in loaded and not (new_head and key.startswith(f"{head}."))]
    unexpected = [key for key in loaded if key not in expected]
    misshaped = [key for key in loaded if key in expected and loaded[key].shape != expected[key].shape]
    if strict and (missing or unexpected or misshaped):
        where = source if isinstance(source, str) else "the given state"
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
