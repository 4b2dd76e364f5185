"""What a sweep branch does, as the `prepare data` step decides it and the pipeline's conditions read it."""

PRETRAIN_THEN_FINETUNE = "pretrain"
FINETUNE_ONLY = "finetune"  # from scratch, or from checkpoint files
SKIP = "skip"  # a scheduled run whose pretraining data the registry already has a model of
