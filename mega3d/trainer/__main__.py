"""torchrun entry point: `python -m mega3d.trainer {train,evaluate} --spec URI --stage NAME ...`.

Reads the (already validated) spec from storage and turns the stage into a plain TrainJob.
"""

from __future__ import annotations

import argparse
import time

from mega3d.trainer import storage
from mega3d.trainer.data.augment import Augmentation
from mega3d.trainer.spec import ExperimentSpec, FinetuneSpec, spec_from_json
from mega3d.trainer.train import Trainer, TrainJob


def build_job(
    spec: ExperimentSpec, stage_name: str, data_index: str, out_dir: str, init: str | None, new_head: bool
) -> TrainJob:
    stage = spec.stage(stage_name)
    model = spec.model
    return TrainJob(
        stage=stage_name,
        data_index=data_index,
        out_dir=out_dir,
        model_name=model.name,
        model_options=model.options(),
        init_checkpoint=init,
        new_head=new_head,
        train_from=stage.train_from if isinstance(stage, FinetuneSpec) else None,
        epochs=stage.epochs,
        batch_size=stage.process_batch_size(),
        accumulate=stage.accumulate,
        seed=stage.seed,
        checkpoint_every=stage.checkpoint_every,
        keep_checkpoints=stage.keep_checkpoints,
        num_workers=stage.num_workers,
        clip_frames=stage.clip.frames,
        augmentation=Augmentation(
            size=stage.clip.size,
            scales=tuple(stage.clip.scales),
            positions=tuple(stage.clip.positions),
            flip=stage.clip.flip,
            mean=stage.clip.mean,
            std=stage.clip.std,
        ),
        lr=stage.optimizer.lr,
        momentum=stage.optimizer.momentum,
        weight_decay=stage.optimizer.weight_decay,
        nesterov=stage.optimizer.nesterov,
        schedule=stage.schedule.kind,
        patience=stage.schedule.patience,
        factor=stage.schedule.factor,
        milestones=tuple(stage.schedule.milestones),
        warmup_epochs=stage.schedule.warmup_epochs,
        precision=stage.precision,
        channels_last=stage.channels_last,
        compile=stage.compile,
        sync_batchnorm=stage.sync_batchnorm,
        eval_split=spec.evaluation.split,
        eval_batch_size=spec.evaluation.batch_size,
        cache_dir=stage.cache_dir,
        max_unreadable=stage.max_unreadable,
        experiment=spec.name,
    )


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

    spec = spec_from_json(storage.read_bytes(args.spec).decode())
    # Training from a checkpoint is fine-tuning: a head trained on other classes starts afresh.
    job = build_job(spec, args.stage, args.data_index, args.out, args.init, new_head=args.command == "train")
    started = time.monotonic()
    trainer = Trainer(job)
    try:
        trainer.setup()
        if args.command == "train":
            trainer.train()
            checkpoint = trainer.checkpoint_uri
        else:
            checkpoint = args.init
        evaluation = trainer.evaluate(job.eval_split)
        trainer.write_metrics(evaluation, time.monotonic() - started, checkpoint)
        trainer.exporter.push(args.command)
        trainer.log(
            f"{job.eval_split}: clip accuracy {evaluation['clip_accuracy']:.3f}  "
            f"video top-1 {evaluation['video_top1']:.3f}  top-5 {evaluation['video_top5']:.3f}  "
            f"({evaluation['n_videos']} videos, {evaluation['n_clips']} clips)"
        )
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
