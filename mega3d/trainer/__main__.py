"""torchrun entry point: `python -m mega3d.trainer {train,evaluate} --spec URI --stage NAME ...`.

Reads the (already validated) spec from storage and runs the stage as a `records.StageJob`: the stage's
spec, the model and evaluation specs as they are, and this run's arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch.distributed as dist

from mega3d.trainer import storage
from mega3d.trainer.distributed import MissingGPUs, require_gpus
from mega3d.trainer.lifetime import PREEMPTED, PREEMPTED_EXIT
from mega3d.trainer.records import StageJob
from mega3d.trainer.spec import spec_from_json
from mega3d.trainer.train import Diverged, Preempted, Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mega3d.trainer", description=__doc__)
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("--spec", required=True, help="URI of the spec JSON")
    parser.add_argument("--stage", required=True)
    parser.add_argument("--data-index", required=True, help="URI of the dataset index")
    parser.add_argument("--out", required=True, help="directory URI for checkpoint and metrics")
    parser.add_argument("--init", help="checkpoint to start from (train) or to evaluate (evaluate)")
    args = parser.parse_args(argv)
    if args.command == "evaluate" and not args.init:
        parser.error("evaluate needs --init CHECKPOINT")

    try:
        require_gpus()
    except MissingGPUs as error:
        raise SystemExit(f"error: {error}") from None
    spec = spec_from_json(storage.read_bytes(args.spec).decode())
    job = StageJob(
        stage=args.stage,
        spec=spec.stage(args.stage),
        model=spec.model,
        evaluation=spec.evaluation,
        experiment=spec.name,
        data_index=args.data_index,
        out_dir=args.out,
        init_checkpoint=args.init,
        # Training from a checkpoint is fine-tuning: a head trained on other classes starts afresh.
        new_head=args.command == "train",
    )
    started = time.monotonic()
    trainer = Trainer(job)
    try:
        trainer.setup()
        if args.command == "train":
            try:
                trainer.train()
            except Preempted as error:
                # Every rank stopped at the same step, after the step checkpoint: to be started again.
                if trainer.rank.is_main:
                    print(f"{PREEMPTED}{error}", file=sys.stderr, flush=True)
                raise SystemExit(PREEMPTED_EXIT) from None
            except Diverged as error:
                # Every rank stops at the same step. Rank 0 says why, once, before any rank exits: torchrun
                # stops the other processes as soon as one ends.
                if trainer.rank.is_main:
                    print(f"error: {error}", file=sys.stderr, flush=True)
                dist.barrier()
                raise SystemExit(1) from None
            checkpoint = trainer.checkpoint_uri
        else:
            checkpoint = args.init
        evaluation = trainer.evaluate(job.evaluation.split)
        metrics = trainer.write_metrics(evaluation, time.monotonic() - started, checkpoint)
        trainer.exporter.push(args.command)
        trainer.log(
            f"{metrics.split}: clip accuracy {metrics.clip_accuracy:.3f}  "
            f"video top-1 {metrics.video_top1:.3f}  top-5 {metrics.video_top5:.3f}  "
            f"({metrics.n_videos} videos, {metrics.n_clips} clips)"
        )
        # No rank tears its process group down while another still communicates or rank 0 still writes.
        dist.barrier()
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
    # Everything is written and the process group is destroyed. Interpreter finalization would now tear
    # down torch's C++ objects in no set order, and a gloo thread met there aborts the process now and
    # then (SIGABRT, "terminate called without an active exception"): torchrun takes that as a failed
    # worker and the stage runs again. Nothing is left to run, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
