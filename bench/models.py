"""mega3d's R3D against a plain eager implementation of the same layers, measured side by side in one run.

The plain network below is written without anything from mega3d: the same convolutions, BatchNorms and
shortcuts, checked to have the same parameter count. Each round times one forward+backward of each network,
alternating, and the medians are compared: `ratio` = mega3d / plain (target <= 1.0).

On a GPU it adds the configuration mega3d trains with there, bf16 autocast + channels_last_3d, against the
plain network in fp32 (target: a speed-up >= 2x for R3D-50 at batch 32).

    .venv/bin/python bench/models.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from mega3d.trainer.models import build_model

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3))}


class PlainBlock(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, bottleneck: bool) -> None:
        super().__init__()
        cout = width * 4 if bottleneck else width
        if bottleneck:
            shapes = [(cin, width, 1, 1), (width, width, 3, stride), (width, cout, 1, 1)]
        else:
            shapes = [(cin, width, 3, stride), (width, width, 3, 1)]
        self.convs = nn.ModuleList(
            nn.Conv3d(i, o, k, stride=s, padding=k // 2, bias=False) for i, o, k, s in shapes
        )
        self.norms = nn.ModuleList(nn.BatchNorm3d(o) for _, o, _, _ in shapes)
        self.shortcut = (
            nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm3d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            out = norm(conv(out))
            if i < len(self.convs) - 1:
                out = torch.relu(out)
        return torch.relu(out + self.shortcut(x))


class PlainR3D(nn.Module):
    def __init__(self, depth: int, n_classes: int) -> None:
        super().__init__()
        kind, counts = DEPTHS[depth]
        bottleneck = kind == "bottleneck"
        self.stem = nn.Sequential(
            nn.Conv3d(3, 64, (7, 7, 7), stride=(1, 2, 2), padding=(3, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.ReLU(),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        blocks, cin = [], 64
        for stage, (width, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            for i in range(count):
                blocks.append(PlainBlock(cin, width, 2 if stage and i == 0 else 1, bottleneck))
                cin = width * 4 if bottleneck else width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3, 4)))


def step_seconds(model: nn.Module, clips: torch.Tensor, autocast: bool) -> float:
    started = time.perf_counter()
    with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(clips).float().sum()
    loss.backward()
    if clips.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


Step = tuple[nn.Module, torch.Tensor, bool]


def compare(label: str, ours: Step, plain: Step, rounds: int) -> None:
    step_seconds(*ours), step_seconds(*plain)  # warm-up: allocator, kernel selection
    ours_times, plain_times = [], []
    for _ in range(rounds):
        ours_times.append(step_seconds(*ours))
        plain_times.append(step_seconds(*plain))
    a, b = statistics.median(ours_times), statistics.median(plain_times)
    print(f"{label:<44} {a * 1e3:>10.0f} {b * 1e3:>10.0f} {a / b:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"torch {torch.__version__} on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'forward+backward':<44} {'mega3d ms':>10} {'plain ms':>10} {'ratio':>7}")
    batch = 2 if device.type == "cpu" else 32
    for depth in DEPTHS:
        ours = build_model(f"r3d-{depth}", 400).to(device)
        plain = PlainR3D(depth, 400).to(device)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in plain.parameters())
        clips = torch.randn(batch, 3, 16, 112, 112, device=device)
        compare(f"R3D-{depth} fp32, batch {batch}", (ours, clips, False), (plain, clips, False), args.rounds)
        if device.type == "cuda":
            fast = ours.to(memory_format=torch.channels_last_3d)
            fast_clips = clips.contiguous(memory_format=torch.channels_last_3d)
            compare(
                f"R3D-{depth} bf16 + channels_last_3d vs fp32, b{batch}",
                (fast, fast_clips, True),
                (plain, clips, False),
                args.rounds,
            )


if __name__ == "__main__":
    main()
