"""Records that one process writes and another reads: one typed definition each, torch-free.

    StageMetrics    <stage>/metrics.json, <stage>/evaluation/metrics.json
                    the trainer -> the pipeline's steps, `mega3d run`'s table, `mega3d report`
    LatestEpoch     <stage>/checkpoints/latest.json: the trainer -> a restarted trainer, a resumed run
    Prediction      the JSON line `python -m mega3d.trainer.predict` prints -> `mega3d predict`
    RunPointer, BranchPointer, ModelPointer
                    KFP artifacts' metadata: one pipeline step -> the next
    ModelRecord, RegistryDecision, StageRecord
                    the model registry's files (see mega3d.pipelines.registry)
    CatalogVersion  a dataset version in the catalog (see mega3d.trainer.catalog)

A record is read with `Record.read(uri)` (or `Record.parse(data, where)`) and written with
`record.write(uri)`. Readers ignore fields they do not know, so that a newer writer's files stay readable,
and fields that are unset are left out of what is written. A file that is not such a record raises
RecordError, naming the file and the field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_serializer

from mega3d.trainer import storage
from mega3d.trainer.spec import (
    KINETICS_MEAN,
    KINETICS_STD,
    EvaluationSpec,
    FinetuneSpec,
    ModelSpec,
    PretrainSpec,
    validation_problems,
)


class RecordError(ValueError):
    """A file or value that is not the record it should be; the message names it and the field."""


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def parse(cls, data: Any, where: str) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = validation_problems(error)
            raise RecordError(
                f"{where}: " + "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in problems)
            ) from None

    @classmethod
    def read(cls, uri: str) -> Self:
        try:
            data = storage.read_json(uri)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RecordError(f"{uri}: not JSON ({error})") from None
        return cls.parse(data, uri)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = self.model_dump(mode="json", exclude_none=True)
        return data

    def write(self, uri: str) -> None:
        storage.write_json(uri, self.to_json())


# ---- what a training stage reports ---------------------------------------------------------------------


class StageJob(Record):
    """What a stage is run with: the validated specs as they are, and the values only a run knows."""

    stage: str  # the stage's name: `pretrain` or a fine-tune stage's
    spec: PretrainSpec | FinetuneSpec
    model: ModelSpec
    evaluation: EvaluationSpec
    experiment: str  # the spec's name, a label of the Prometheus metrics
    data_index: str  # URI of the dataset index the stage trains (or evaluates) on
    out_dir: str  # where its checkpoints and metrics go
    init_checkpoint: str | None = None  # where the model starts (train) or what is evaluated (evaluate)
    new_head: bool = False  # fine-tuning: a checkpoint's head for other classes is replaced

    @property
    def train_from(self) -> str | None:
        """The first module that trains (fine-tuning); None trains every module."""
        return self.spec.train_from if isinstance(self.spec, FinetuneSpec) else None


class LatestEpoch(Record):
    """`<stage>/checkpoints/latest.json`: the newest verified epoch file, as a restarted job finds it (the
    trainer writes it; a run that resumes a stage elsewhere copies it)."""

    epoch: int
    file: str  # its name in the checkpoints directory
    sha256: str  # of its bytes, as written and read back
    # A step checkpoint written on notice (SIGTERM): when. What tells the launcher that a job that ended
    # unsuccessfully was preempted (a new notice since it last looked) rather than failed.
    noticed_at: float | None = None


class RankInfo(Record):
    rank: int
    pid: int
    host: str


class EpochRecord(Record):
    """One training epoch, as the stage's history keeps it."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    lr: float
    clips_per_s: float
    data_wait: float  # share of the epoch spent waiting for the loader
    seconds: float
    unreadable: int  # clips that could not be decoded so far (skipped)


def _not_a_boolean(value: Any) -> Any:
    # JSON's true and false would otherwise pass as 1.0 and 0.0: a score that is a flag is a broken file.
    if isinstance(value, bool):
        raise ValueError(f"a score must be a number, not {json.dumps(value)}")
    return value


Score = Annotated[float, BeforeValidator(_not_a_boolean)]


class Scores(Record):
    """How a model scored on an evaluation split: the part of StageMetrics that reports compare. Fields a
    file lacks are None (a report shows a gap)."""

    clip_accuracy: Score | None = None  # every window scored alone
    video_top1: Score | None = None  # window probabilities averaged per video
    video_top5: Score | None = None
    mean_class_accuracy: Score | None = None  # single-label data
    mAP: Score | None = None  # multi-label data (several tags per video)
    per_class_accuracy: dict[str, Score] | None = None  # video top-1 per class that has videos
    per_class_ap: dict[str, Score] | None = None  # multi-label: average precision per class

    @property
    def multi_label(self) -> bool:
        return self.mAP is not None

    @property
    def headline(self) -> float | None:
        """What "better" means: mAP for multi-label data, else video top-1."""
        return self.mAP if self.multi_label else self.video_top1

    @property
    def per_class(self) -> dict[str, float]:
        return (self.per_class_ap if self.multi_label else self.per_class_accuracy) or {}

    @property
    def per_class_measure(self) -> str:
        return "average precision" if self.multi_label else "video top-1 accuracy"


class StageMetrics(Scores):
    """`metrics.json` of a stage (training, then evaluation on its split) or of an evaluation step."""

    clip_accuracy: Score
    video_top1: Score
    video_top5: Score
    stage: str
    split: str
    job: StageJob
    classes: list[str]
    checkpoint: str  # the checkpoint that was evaluated
    world_size: int
    ranks: list[RankInfo]  # what each rank said of itself, gathered over the process group
    history: list[EpochRecord] = []  # empty for an evaluation step
    seconds: float
    n_videos: int
    n_clips: int
    unreadable: int
    preemptions: int = 0  # restarts after a checkpoint on notice (SIGTERM)
    preempted_seconds: float = 0.0  # from those checkpoints to the restarts
    # Rows: true class, columns: video top-1 class, whatever the number of classes; multi-label data: a video
    # counts in the row of each of its labels. None in older files (kept up to 50 single-label classes).
    confusion: list[list[int]] | None = None

    @field_serializer("job")
    def _whole_job(self, job: StageJob) -> dict[str, Any]:
        # Every setting the stage ran with, unset ones (None) included: a reader need not know the defaults.
        whole: dict[str, Any] = job.model_dump(mode="json")
        return whole

    @property
    def headline(self) -> float:
        """Never None: a stage's evaluation always has video top-1."""
        value = super().headline
        assert value is not None
        return value


# ---- predictions ---------------------------------------------------------------------------------------


class ClipShape(Record):
    """How a model was trained to see a clip; the paper's defaults where a checkpoint does not say."""

    frames: int = Field(default=16, ge=1)
    size: int = Field(default=112, ge=1)
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD


class ScoredLabel(Record):
    """A class and its probability: an entry of the reference implementation's results JSON."""

    label: str
    score: float


class Prediction(Record):
    """A video-level prediction: the `top` classes by window probabilities averaged over the video."""

    video: str
    model: str  # the checkpoint's URI
    arch: str
    windows: int
    window_frames: int
    frames: int
    seconds: float
    top: list[ScoredLabel]


# ---- pipeline artifacts' metadata ----------------------------------------------------------------------


class RunPointer(Record):
    """The `run` artifact: where the run keeps its files."""

    run_dir: str
    run_id: str
    datasets: list[str]  # every dataset the run uses (synthetic ones exist from here on)
    catalog: dict[str, str] = {}  # dataset name -> the catalog version the run resolved it to (`name@N`)


class BranchPointer(Record):
    """The `data` artifact of a branch (its pretraining data), or of a fine-tune target (its dataset)."""

    run_dir: str
    run_id: str
    branch: str  # empty without a sweep
    branch_dir: str
    index: str | None = None  # the dataset index; none for a branch without pretraining
    datasets: list[str] = []
    classes: int | None = None
    videos: int | None = None
    fingerprint: str | None = None
    run_key: str = ""  # what the branch's model depends on (mega3d.pipelines.keys)
    stage_keys: dict[str, str] = {}  # what each stage's result depends on
    reuse_stages: bool = False  # stages of earlier runs with the same key are reused (skip_if_trained)
    trained_by: str | None = None  # a skipped branch: the run whose registry record has this run key


class ModelPointer(Record):
    """The `model` artifact of a training stage."""

    run_dir: str
    branch: str
    stage: str
    checkpoint: str
    arch: str
    classes: int


# ---- the model registry --------------------------------------------------------------------------------


class TargetResult(Record):
    """A registered model's result on one fine-tune target."""

    evaluation_set: str  # `<target index fingerprint>:<split>`: only equal sets are compared
    score: float  # the target's headline (video top-1, or mAP)
    checkpoint: str
    clip_accuracy: float
    video_top1: float
    video_top5: float


class ModelRecord(Record):
    """A trained model in the registry (`models/<run key>.json`, and `champion.json`)."""

    run_id: str
    branch: str
    fingerprint: str  # of the pretraining data (without pretraining: of the targets' evaluation sets)
    run_key: str | None = None  # None in records from before run keys
    model: str
    pretrain_checkpoint: str | None = None
    targets: dict[str, TargetResult]

    @property
    def key(self) -> str:
        """Its file's name in the registry: the run key (the data fingerprint, from before run keys)."""
        return self.run_key or self.fingerprint

    @property
    def score(self) -> float:
        """The mean over targets of their headline scores."""
        return sum(target.score for target in self.targets.values()) / len(self.targets)

    @property
    def evaluation_sets(self) -> dict[str, str]:
        return {name: target.evaluation_set for name, target in self.targets.items()}


class StageRecord(Record):
    """A stage's result for a stage key (`<registry>/stages/<key>.json`): the run and directory that train
    it, and whether it finished there. Later runs with the same key reuse a finished one and resume an
    unfinished one from its last epoch checkpoint."""

    key: str
    stage: str
    run_id: str
    stage_dir: str
    finished: bool = False


class RegistryDecision(Record):
    """One registry decision, as `history.json` lists them oldest first."""

    time: str
    run_id: str
    fingerprint: str
    score: float
    promoted: bool
    reason: str
    previous_champion: str | None = None  # its run id


# ---- the dataset catalog -------------------------------------------------------------------------------


class CatalogVersion(Record):
    """One published version of a catalog dataset (`<storage>/catalog/<name>/<version>.json`); never
    rewritten once published."""

    name: str
    version: int = Field(ge=1)
    uri: str  # the dataset: its index is `<uri>/index.npz`
    fingerprint: str  # of the dataset's content when it was published
    videos: int
    classes: int
    published: str  # UTC, ISO 8601
    published_by: str  # the command and where it ran
    made_from: str = ""  # what it was made of: a merge's or subset's inputs, an ingest's source

    @property
    def reference(self) -> str:
        """`name@version`, as a spec pins it."""
        return f"{self.name}@{self.version}"
