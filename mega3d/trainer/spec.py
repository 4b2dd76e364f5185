"""The experiment spec: the one contract between the CLI, the pipeline and the trainer.

Torch-free on purpose: the CLI and the pipeline launcher import it without pulling in torch.
A spec is validated once, when it is loaded (`load_spec` / `parse_spec`); every problem is reported
with the file and the dotted path of the field, and later layers trust what they are given.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from yaml.nodes import MappingNode, Node, ScalarNode

from mega3d.trainer.model_catalog import FAMILIES, canonical_name, family_of, model_names, unknown_model

# Pod names are capped at 63 characters and TorchX appends a suffix, so names stay short and DNS-safe.
DNS_NAME = r"^[a-z]([-a-z0-9]{0,30}[a-z0-9])?$"
K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a Kubernetes object name (namespace, queue, ...)
PRETRAIN = "pretrain"
SCRATCH = "scratch"  # init_from: random weights (the paper's baseline without pretraining)


def is_checkpoint_uri(init_from: str) -> bool:
    """Stage names are DNS-safe (no '/' or '.'): anything else names a checkpoint file."""
    return "/" in init_from or "." in init_from


# Stage names become directories of a run, beside these.
RESERVED_STAGE_NAMES = ("data", "kfp")

# Upper bounds reject the absurd (a learning rate of 1e300, a million nodes) at the boundary, where it is
# one line naming the field, instead of deep in an optimizer or a scheduler. Each is far above the paper's
# recipes (200 epochs, 1,039 classes, ResNet-200, 32 nodes x 8 GPUs) and today's largest machines.
MAX_EPOCHS = 10_000
MAX_SEED = 2**32 - 1  # what every seeded generator (random, numpy, torch) takes
MAX_URI = 4096
Uri = Annotated[str, Field(min_length=1, max_length=MAX_URI)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
Name = Annotated[str, Field(pattern=DNS_NAME)]


def _list_as_tuple(value: Any) -> Any:
    # YAML and JSON have lists only, and strict validation takes a tuple field from a tuple alone.
    return tuple(value) if isinstance(value, list) else value


Unit = Annotated[float, Field(ge=0, le=1)]  # a pixel statistic: pixels are in [0, 1]
PositiveUnit = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SyntheticSpec(_Strict):
    """Parameters of a synthetic motion dataset; `mega3d data synth` takes the same ones."""

    classes: Annotated[int, Field(ge=1, le=10_000)] = 4
    videos_per_class: Annotated[int, Field(ge=1, le=100_000)] = 16
    frames: Annotated[int, Field(ge=1, le=10_000)] = 24
    size: Annotated[int, Field(ge=16, le=4096)] = 48
    speed: Annotated[float, Field(gt=0, le=1000)] = 1.5  # pixels per frame
    rotation: Annotated[float, Field(ge=-360, le=360)] = 0.0  # degrees
    seed: Seed = 0


# A dataset of the catalog (mega3d.trainer.catalog): its name, and `@version` where a spec pins one.
CATALOG_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
CATALOG_REFERENCE = rf"^{CATALOG_NAME}(@[1-9][0-9]{{0,8}})?$"


class DatasetSpec(_Strict):
    """A dataset by URI, or by catalog name. A run resolves a catalog name when it starts: the spec it
    keeps has the version pinned (`name@N`) and that version's `uri`."""

    uri: Uri | None = Field(default=None, description="fsspec URI; relative paths are under `storage`.")
    catalog: Annotated[str, Field(pattern=CATALOG_REFERENCE)] | None = Field(
        default=None,
        description="A catalog dataset under `storage`: `name` (its newest version when a run starts) or "
        "`name@N` (version N).",
    )
    synthetic: SyntheticSpec | None = Field(
        default=None, description="Synthesize the dataset at `uri` when it does not exist yet."
    )

    @property
    def pinned(self) -> bool:
        return self.catalog is not None and "@" in self.catalog


class ModelSpec(_Strict):
    """An architecture and its options; unset options take the reference implementation's defaults."""

    name: str = Field(
        default="r3d-18", description="e.g. r3d-50, r2plus1d-18, or a reference alias (resnet-50)"
    )
    n_input_channels: Annotated[int, Field(ge=1, le=64)] | None = None
    conv1_t_size: Annotated[int, Field(ge=1, le=31)] | None = None
    conv1_t_stride: Annotated[int, Field(ge=1, le=16)] | None = None
    no_max_pool: bool | None = None
    shortcut_type: Literal["A", "B"] | None = None
    widen_factor: Annotated[float, Field(gt=0, le=16)] | None = None
    k: Annotated[int, Field(ge=1, le=16)] | None = Field(
        default=None, description="Wide ResNet width multiplier (default 2)"
    )
    cardinality: Annotated[int, Field(ge=1, le=1024)] | None = Field(
        default=None, description="ResNeXt groups (default 32)"
    )

    @field_validator("name")
    @classmethod
    def _canonical(cls, name: str) -> str:
        return canonical_name(name)

    def options(self) -> dict[str, Any]:
        """The options that were set, as keyword arguments of `mega3d.trainer.models.build_model`."""
        return {key: value for key, value in self.model_dump(exclude={"name"}).items() if value is not None}


CropPosition = Literal["center", "top-left", "top-right", "bottom-left", "bottom-right"]
CropScale = Annotated[float, Field(gt=0, le=1)]
# The paper's multi-scale corner crops and normalisation (Kinetics statistics).
PAPER_SCALES: tuple[float, ...] = (1.0, 2**-0.25, 2**-0.5, 2**-0.75, 0.5)
CROP_POSITIONS: tuple[CropPosition, ...] = ("center", "top-left", "top-right", "bottom-left", "bottom-right")
KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)


class ClipSpec(_Strict):
    """Input clips and their augmentation; the defaults are the paper's (Kinetics mean and std)."""

    frames: Annotated[int, Field(ge=1, le=1024)] = 16
    size: Annotated[int, Field(ge=8, le=1024)] = 112
    scales: Annotated[list[CropScale], Field(min_length=1, max_length=64)] = Field(
        default=list(PAPER_SCALES),
        description="Training crops: side = scale x the short side, one scale drawn per clip.",
    )
    positions: Annotated[list[CropPosition], Field(min_length=1, max_length=64)] = Field(
        default=list(CROP_POSITIONS),
        description="Training crops: where the crop sits, one position drawn per clip.",
    )
    flip: bool = Field(default=True, description="Random horizontal flips; off when left and right differ.")
    mean: Annotated[tuple[Unit, Unit, Unit], BeforeValidator(_list_as_tuple)] = Field(
        default=KINETICS_MEAN, description="RGB mean, pixels in [0, 1]."
    )
    std: Annotated[tuple[PositiveUnit, PositiveUnit, PositiveUnit], BeforeValidator(_list_as_tuple)] = Field(
        default=KINETICS_STD, description="RGB standard deviation, pixels in [0, 1]."
    )


class OptimizerSpec(_Strict):
    """SGD with the paper's defaults."""

    # Published SGD recipes stay below 10 even for 8k-clip batches with the linear scaling rule (3.2).
    lr: Annotated[float, Field(gt=0, le=10)] = 0.003
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.001
    nesterov: bool = False


class ScheduleSpec(_Strict):
    """How the learning rate changes from epoch to epoch.

    plateau (the paper): multiply by `factor` when validation loss has not improved for `patience` epochs;
    multistep: multiply by `factor` at each epoch in `milestones`; cosine: decay to 0 over the epochs.
    `warmup_epochs` first ramps it up linearly from lr / warmup_epochs."""

    kind: Literal["plateau", "multistep", "cosine"] = "plateau"
    patience: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 10
    factor: Annotated[float, Field(gt=0, lt=1)] = 0.1
    milestones: Annotated[list[Epochs], Field(max_length=1000)] = Field(
        default=[], description="multistep: epochs at which lr drops"
    )
    warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 0


MAX_NODES = 1024
DEFAULT_BATCH_SIZE = 32
NODE_RANGE = re.compile(r"\d{1,4}:\d{1,4}")  # elastic: "min:max"


def _node_count(value: Any) -> Any:
    # One message for either form (a union would report why the value is neither, twice).
    if isinstance(value, str) and NODE_RANGE.fullmatch(value):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_NODES:
            return value
        raise PydanticCustomError("node_count", "must be 1 to {most} nodes", {"most": MAX_NODES})
    raise PydanticCustomError("node_count", "must be a number of nodes, or 'min:max' (elastic, e.g. '2:4')")


class ResourcesSpec(_Strict):
    nnodes: Annotated[int | str, BeforeValidator(_node_count)] = Field(
        default=1,
        description="Nodes; or 'min:max' (elastic): the stage starts once min nodes are there and goes on, "
        "after a preemption, on whatever number of nodes comes back (needs global_batch_size).",
    )
    nproc_per_node: Annotated[int, Field(ge=1, le=256)] = 1
    gpus: Annotated[int, Field(ge=0, le=64)] = 0  # per node
    cpu: Annotated[int, Field(ge=1, le=4096)] = 4
    memory_gb: Annotated[int, Field(ge=1, le=65_536)] = 16

    @property
    def node_range(self) -> tuple[int, int]:
        """(fewest, most) nodes the stage trains on: both `nnodes` when it is a number."""
        if isinstance(self.nnodes, int):
            return self.nnodes, self.nnodes
        fewest, most = self.nnodes.split(":")
        return int(fewest), int(most)

    @property
    def elastic(self) -> bool:
        return isinstance(self.nnodes, str)


class _StageSpec(_Strict):
    epochs: Epochs = 200
    batch_size: Annotated[int, Field(ge=1, le=65_536)] | None = Field(
        default=None, description=f"Clips per process and step ({DEFAULT_BATCH_SIZE} if neither is given)."
    )
    global_batch_size: Annotated[int, Field(ge=1, le=16_777_216)] | None = Field(
        default=None,
        description="Clips per optimizer step over all processes, whatever the node count: sets batch_size "
        "to global_batch_size / (nnodes x nproc_per_node x accumulate); with 'min:max' nodes, max nodes.",
    )
    accumulate: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1, description="Steps whose gradients add up before an update."
    )
    seed: Seed = Field(default=0, description="Seeds weights, clip sampling and augmentation.")
    checkpoint_every: Epochs = Field(default=1, description="Epochs between checkpoints (and the last one).")
    keep_checkpoints: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=2, description="How many of the newest epoch checkpoints to keep."
    )
    checkpoint_minutes: Annotated[float, Field(gt=0, le=100_000)] | None = Field(
        default=None,
        description="Also a step checkpoint every this many minutes within an epoch (a step checkpoint is "
        "always written on SIGTERM).",
    )
    num_workers: Annotated[int, Field(ge=0, le=256)] = 4
    clip: ClipSpec = ClipSpec()
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    resources: ResourcesSpec = ResourcesSpec()
    max_retries: Annotated[int, Field(ge=0, le=100)] = 0
    precision: Literal["fp32", "bf16"] = Field(default="fp32", description="bf16: autocast (GPUs only)")
    channels_last: bool = Field(default=False, description="channels_last_3d memory format (for GPUs)")
    compile: bool = Field(
        default=False, description="torch.compile the training step (minutes of compiling)."
    )
    sync_batchnorm: bool = Field(default=False, description="BatchNorm statistics over all GPUs (GPUs only).")
    max_unreadable: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.01,
        description="Fraction of clips that may fail to decode (skipped, counted) before the run stops.",
    )
    cache_dir: Uri | None = Field(
        default=None, description="Node-local directory (e.g. an SSD) that keeps a copy of each video read."
    )

    def batching(self, processes: int) -> tuple[int, int]:
        """(clips per process and step, steps whose gradients add up per update) on `processes` processes:
        `batch_size` and `accumulate`; or, with `global_batch_size`, the share of each process at the most
        nodes, and as many steps as make up the global batch on `processes`. The batch per process (which
        BatchNorm normalises over) is the same on every node count; fewer nodes accumulate more steps."""
        if self.global_batch_size is None:
            return self.batch_size or DEFAULT_BATCH_SIZE, self.accumulate
        res = self.resources
        batch = self.global_batch_size // (res.node_range[1] * res.nproc_per_node * self.accumulate)
        return batch, self.global_batch_size // (processes * batch)


class PretrainSpec(_StageSpec):
    datasets: list[str] = Field(min_length=1, description="Datasets whose label spaces are concatenated.")


class FinetuneSpec(_StageSpec):
    name: Name
    dataset: str
    init_from: Uri = Field(
        default=PRETRAIN,
        description="'pretrain', 'scratch' (random weights) or a checkpoint URI (relative: under storage)",
    )
    train_from: Annotated[str, Field(max_length=256)] | None = Field(
        default=None,
        description="First module to train (e.g. layer4); earlier modules are frozen. None trains all.",
    )


Fraction = Annotated[float, Field(gt=0, le=1)]


class SweepSpec(_Strict):
    """Axes that expand one spec into parallel branches, one per combination of their values; each branch
    pretrains, fine-tunes every target and evaluates on its own (the paper's studies, §4.1-4.4)."""

    pretrain_datasets: list[list[str]] = Field(
        default=[],
        description="pretraining merges, e.g. [[], [kinetics700], [kinetics700, mit]]; [] trains the "
        "targets from scratch",
    )
    family: list[str] = Field(default=[], description="architecture families, e.g. [r3d, r2plus1d]")
    depth: list[Annotated[int, Field(ge=1, le=1000)]] = Field(
        default=[], description="depths, e.g. [18, 34, 50]"
    )
    category_fraction: list[Fraction] = Field(
        default=[], description="fractions of the pretraining categories kept"
    )
    instance_fraction: list[Fraction] = Field(
        default=[], description="fractions of each kept category's training videos kept"
    )


@dataclass(frozen=True)
class Branch:
    """One combination of a sweep: a name (a directory under the run; empty without a sweep), the model and
    the pretraining data it trains on."""

    name: str
    model: ModelSpec
    pretrain_datasets: tuple[str, ...] = ()
    category_fraction: float = 1.0
    instance_fraction: float = 1.0

    @property
    def subset(self) -> bool:
        return self.category_fraction < 1 or self.instance_fraction < 1


class EvaluationSpec(_Strict):
    split: Literal["training", "validation", "testing"] = "validation"
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 32


class ExperimentSpec(_Strict):
    name: Name
    storage: Uri = Field(description="Root URI for datasets, checkpoints and metrics.")
    image: Annotated[str, Field(min_length=1, max_length=MAX_URI)] = "mega3d:latest"
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    model: ModelSpec = Field(default=ModelSpec(), description="The architecture every stage trains.")
    pretrain: PretrainSpec | None = Field(
        default=None, description="None: fine-tune existing checkpoints only."
    )
    finetune: list[FinetuneSpec] = Field(min_length=1)
    evaluation: EvaluationSpec = EvaluationSpec()
    sweep: SweepSpec | None = Field(default=None, description="Parallel branches over data and models.")

    def branches(self) -> list[Branch]:
        """Every combination of the sweep's values (one unnamed branch without a sweep). A branch is named
        by the values of its axes, e.g. `kinetics700+mit_r3d-50_c30`."""
        pretrain = tuple(self.pretrain.datasets) if self.pretrain else ()
        sweep = self.sweep or SweepSpec()
        family, _, depth = self.model.name.rpartition("-")
        axes = itertools.product(
            [tuple(d) for d in sweep.pretrain_datasets] or [pretrain],
            sweep.family or [family],
            sweep.depth or [int(depth)],
            sweep.category_fraction or [1.0],
            sweep.instance_fraction or [1.0],
        )
        branches: list[Branch] = []
        for datasets, family_name, depth_value, categories, instances in axes:
            if not datasets and (categories, instances) != (1.0, 1.0):
                continue  # from scratch there is no pretraining data to take a fraction of

            parts = [
                ("+".join(datasets) or SCRATCH) if sweep.pretrain_datasets else "",
                f"{family_name}-{depth_value}" if sweep.family or sweep.depth else "",
                f"c{round(categories * 100)}" if sweep.category_fraction and datasets else "",
                f"i{round(instances * 100)}" if sweep.instance_fraction and datasets else "",
            ]
            model = self.model.model_copy(update={"name": f"{family_name}-{depth_value}"})
            name = "_".join(part for part in parts if part)
            branches.append(Branch(name, model, datasets, categories, instances))
        return branches

    def for_branch(self, branch: Branch) -> ExperimentSpec:
        """The spec as one branch trains it: its model and pretraining datasets, no sweep. A branch without
        pretraining datasets has no pretrain stage, and its targets train from scratch (every module)."""
        update: dict[str, Any] = {"model": branch.model, "sweep": None}
        if self.pretrain is not None and branch.pretrain_datasets:
            update["pretrain"] = self.pretrain.model_copy(update={"datasets": list(branch.pretrain_datasets)})
        elif self.pretrain is not None:
            update["pretrain"] = None
            update["finetune"] = [
                stage.model_copy(update={"init_from": SCRATCH, "train_from": None})
                if stage.init_from == PRETRAIN
                else stage
                for stage in self.finetune
            ]
        return self.model_copy(update=update)

    def check_branches(self, max_branches: int, source: str) -> None:
        """SpecError when the sweep expands to more branches than the deployment allows."""
        n = len(self.branches())
        if n > max_branches:
            message = f"expands to {n} branches, more than max_branches {max_branches} (settings)"
            raise SpecError(source, [Problem("sweep", message)])

    def stage(self, name: str) -> PretrainSpec | FinetuneSpec:
        if name == PRETRAIN and self.pretrain is not None:
            return self.pretrain
        for stage in self.finetune:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}")

    def stage_datasets(self, name: str) -> list[str]:
        """The datasets a stage trains on: the pretraining merge, or a fine-tune stage's target."""
        stage = self.stage(name)
        return stage.datasets if isinstance(stage, PretrainSpec) else [stage.dataset]

    def stage_names(self) -> list[str]:
        return [*([PRETRAIN] if self.pretrain else []), *(stage.name for stage in self.finetune)]

    def stages(self) -> list[tuple[str, PretrainSpec | FinetuneSpec]]:
        """(dotted path, stage) of every stage, in order."""
        return [
            *([("pretrain", self.pretrain)] if self.pretrain else []),
            *((f"finetune[{i}]", stage) for i, stage in enumerate(self.finetune)),
        ]

    def under_storage(self, uri: str) -> str:
        """A URI as written in the spec: relative ones are under `storage`."""
        return uri if "://" in uri or uri.startswith("/") else f"{self.storage.rstrip('/')}/{uri}"

    def dataset_uri(self, name: str) -> str:
        uri = self.datasets[name].uri
        if uri is None:  # resolving the catalog comes first (mega3d.trainer.catalog.resolve_spec)
            raise ValueError(f"datasets.{name}: catalog {self.datasets[name].catalog} is not resolved yet")
        return self.under_storage(uri)

    def with_storage(self, storage: str) -> ExperimentSpec:
        return self.model_copy(update={"storage": storage})


@dataclass(frozen=True)
class Problem:
    path: str
    message: str


class SpecError(Exception):
    """A spec that cannot be used; one line per problem, each naming the source and the field."""

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{self.source}: {p.path}: {p.message}" if p.path else f"{self.source}: {p.message}"
            for p in self.problems
        ]


def _dotted(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}
# Only names carry a pattern: mega3d's own (pods are named after them) and Kubernetes object names.
_NAME_RULES = {
    DNS_NAME: "must be lowercase letters, digits and '-', start with a letter, at most 32 long",
    K8S_NAME: "must be lowercase letters, digits and '-', start and end with a letter or digit, "
    "at most 63 long",
}


class _Text(str):
    """Punctuation of a preview, as opposed to a string value (which is quoted)."""


def _items(values: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for i, value in enumerate(values):
        if i:
            yield _Text(", ")
        yield value
    yield _Text("]")


def _entries(mapping: dict[Any, Any], limit: int) -> Iterator[Any]:
    for i, (key, value) in enumerate(mapping.items()):
        yield _Text(f"{', ' if i else ''}{json.dumps(str(key)[:limit])}: ")
        yield value
    yield _Text("}")


def preview(value: Any, limit: int = 60) -> str:
    """The first `limit` characters of a value as JSON. Only that much is rendered: an input can be huge
    (a YAML alias bomb expands to billions of values, sharing them) or even contain itself."""
    pieces: list[str] = []
    size = 0
    pending: list[Iterator[Any]] = [iter([value])]
    while pending and size <= limit:
        item = next(pending[-1], pending)  # `pending` itself marks an exhausted iterator
        if item is pending:
            pending.pop()
            continue
        if isinstance(item, _Text):
            text = str(item)
        elif isinstance(item, dict):
            text = "{"
            pending.append(_entries(item, limit))
        elif isinstance(item, list | tuple):
            text = "["
            pending.append(_items(item))
        elif isinstance(item, str):
            text = json.dumps(item[: limit + 1])
        else:
            text = json.dumps(item, default=str)
        pieces.append(text)
        size += len(text)
    return "".join(pieces)[:limit]


def validation_problems(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        message = _FRIENDLY.get(item["type"], item["msg"])
        if item["type"] == "string_pattern_mismatch":
            message = _NAME_RULES.get(item.get("ctx", {}).get("pattern", ""), message)
        if item["type"] not in ("missing",):
            message += f" (got {preview(item['input'])})"
        problems.append(Problem(_dotted(item["loc"]), message))
    return problems


def outside_storage(uri: str) -> bool:
    """A relative URI that does not name a place inside `storage` (`../elsewhere`, `.`)."""
    if "://" in uri or uri.startswith("/"):
        return False
    normal = posixpath.normpath(uri)
    return normal == "." or normal == ".." or normal.startswith("../")


_UNDER_STORAGE = "(a relative URI is under it; give an absolute one for a place elsewhere)"


def _reference_problems(spec: ExperimentSpec) -> list[Problem]:
    known = sorted(spec.datasets)
    problems = [
        Problem(f"datasets.{name}.uri", f"{dataset.uri!r} is not under storage {_UNDER_STORAGE}")
        for name, dataset in spec.datasets.items()
        if dataset.uri is not None and outside_storage(dataset.uri)
    ]
    for name, dataset in spec.datasets.items():
        if dataset.uri is None and dataset.catalog is None:
            problems.append(Problem(f"datasets.{name}", "give `uri` or `catalog`"))
        elif dataset.catalog is not None and dataset.synthetic is not None:
            problems.append(Problem(f"datasets.{name}.synthetic", "a catalog dataset is not synthesized"))
        elif dataset.catalog is not None and dataset.uri is not None and not dataset.pinned:
            problems.append(
                Problem(f"datasets.{name}.uri", "give `uri` or `catalog`, not both (a run sets `uri`)")
            )

    def check_dataset(path: str, name: str) -> None:
        if name not in spec.datasets:
            problems.append(Problem(path, f"unknown dataset {name!r} (defined: {', '.join(known)})"))

    pretrain_datasets = spec.pretrain.datasets if spec.pretrain else []
    for i, name in enumerate(pretrain_datasets):
        check_dataset(f"pretrain.datasets[{i}]", name)
        if name in pretrain_datasets[:i]:
            problems.append(Problem(f"pretrain.datasets[{i}]", f"{name!r} is listed twice"))
    for path, stage in spec.stages():
        res = stage.resources
        problems += _schedule_problems(path, stage) + _batch_problems(path, stage)
        if not res.gpus and stage.precision == "bf16":
            # PyTorch's CPU bf16 3D convolutions crash (with channels_last_3d) or return non-finite
            # gradients on some CPUs (seen with torch 2.13), and are no faster than fp32 there.
            problems.append(Problem(f"{path}.precision", "bf16 needs GPUs (gpus: 0); use fp32 on CPUs"))
        if stage.sync_batchnorm and not res.gpus:
            problems.append(Problem(f"{path}.sync_batchnorm", "SyncBatchNorm needs GPUs (gpus: 0)"))
        if res.gpus and res.nproc_per_node > res.gpus:
            problems.append(
                Problem(
                    f"{path}.resources.nproc_per_node",
                    f"{res.nproc_per_node} processes per node but {res.gpus} GPUs (one process per GPU)",
                )
            )
    model = spec.model
    stages: tuple[str, ...] = ()
    if model.name not in model_names():
        problems.append(Problem("model.name", unknown_model(model.name)))
    else:
        family_name, family = family_of(model.name)
        stages = family.stages
        problems += [
            Problem(f"model.{option}", f"{family_name} models take no {option!r} option")
            for option in model.options()
            if option not in family.options
        ]
    earlier = spec.stage_names()[:1] if spec.pretrain else []
    for i, stage in enumerate(spec.finetune):
        check_dataset(f"finetune[{i}].dataset", stage.dataset)
        if stage.name in earlier or stage.name in RESERVED_STAGE_NAMES:
            problems.append(Problem(f"finetune[{i}].name", f"stage name {stage.name!r} is already used"))
        if stage.train_from is not None and stages and stage.train_from not in stages:
            problems.append(
                Problem(
                    f"finetune[{i}].train_from",
                    f"{model.name} has no stage {stage.train_from!r} (one of: {', '.join(stages)})",
                )
            )
        # Fine-tune stages run side by side (a ParallelFor): each starts from pretraining, scratch or a file.
        known_start = stage.init_from == SCRATCH or (
            stage.init_from == PRETRAIN and spec.pretrain is not None
        )
        if not is_checkpoint_uri(stage.init_from) and not known_start:
            problems.append(
                Problem(
                    f"finetune[{i}].init_from",
                    f"{stage.init_from!r} is neither the pretrain stage"
                    f"{'' if spec.pretrain else ' (the spec has none)'}, scratch, nor a checkpoint URI",
                )
            )
        if is_checkpoint_uri(stage.init_from) and outside_storage(stage.init_from):
            problems.append(
                Problem(
                    f"finetune[{i}].init_from",
                    f"{stage.init_from!r} is not under storage {_UNDER_STORAGE}",
                )
            )
        if stage.init_from == SCRATCH and stage.train_from is not None:
            problems.append(
                Problem(
                    f"finetune[{i}].train_from", "training from scratch trains every module: leave it unset"
                )
            )
        earlier.append(stage.name)
    if spec.sweep is not None:
        problems += _sweep_problems(spec, spec.sweep, check_dataset)
    return problems


def _sweep_problems(
    spec: ExperimentSpec, sweep: SweepSpec, check_dataset: Callable[[str, str], None]
) -> list[Problem]:
    problems = []
    if spec.pretrain is None:
        for axis in ("pretrain_datasets", "category_fraction", "instance_fraction"):
            if getattr(sweep, axis):
                problems.append(Problem(f"sweep.{axis}", "needs a pretrain stage"))
    for i, datasets in enumerate(sweep.pretrain_datasets):
        for j, name in enumerate(datasets):
            check_dataset(f"sweep.pretrain_datasets[{i}][{j}]", name)
    for axis in ("pretrain_datasets", "family", "depth", "category_fraction", "instance_fraction"):
        values = [json.dumps(value) for value in getattr(sweep, axis)]
        for i, value in enumerate(values):
            if value in values[:i]:
                problems.append(Problem(f"sweep.{axis}[{i}]", f"{value} is listed twice"))
    for i, family_name in enumerate(sweep.family):
        if family_name not in FAMILIES:
            problems.append(
                Problem(
                    f"sweep.family[{i}]", f"unknown family {family_name!r} (one of: {', '.join(FAMILIES)})"
                )
            )
    known = model_names()
    if not problems:
        for branch in spec.branches():
            name = branch.model.name
            if name not in known:
                problems.append(Problem("sweep.depth", f"{name} is not a model (see `mega3d models list`)"))
                continue
            family_name, family = family_of(name)
            problems += [
                Problem("sweep.family", f"{family_name} models take no {option!r} option (model.{option})")
                for option in spec.model.options()
                if option not in family.options
            ]
            stages = family.stages
            problems += [
                Problem(f"finetune[{i}].train_from", f"{name} has no stage {stage.train_from!r}")
                for i, stage in enumerate(spec.finetune)
                if stage.train_from is not None and stage.train_from not in stages
            ]
    return list(dict.fromkeys(problems))


def _schedule_problems(path: str, stage: PretrainSpec | FinetuneSpec) -> list[Problem]:
    problems = []
    schedule, optimizer = stage.schedule, stage.optimizer
    if schedule.kind == "multistep" and not schedule.milestones:
        problems.append(
            Problem(f"{path}.schedule.milestones", "multistep needs the epochs at which lr drops")
        )
    if schedule.milestones != sorted(set(schedule.milestones)):
        problems.append(Problem(f"{path}.schedule.milestones", "must increase"))
    if schedule.warmup_epochs >= stage.epochs:
        problems.append(
            Problem(f"{path}.schedule.warmup_epochs", f"must be fewer than the {stage.epochs} epochs")
        )
    if optimizer.nesterov and optimizer.momentum == 0:
        problems.append(Problem(f"{path}.optimizer.nesterov", "needs momentum > 0"))
    return problems


def _batch_problems(path: str, stage: PretrainSpec | FinetuneSpec) -> list[Problem]:
    """The node range, and a global batch that divides evenly on every node count in it."""
    res, total = stage.resources, stage.global_batch_size
    fewest, most = res.node_range
    if not 1 <= fewest <= most <= MAX_NODES:
        return [Problem(f"{path}.resources.nnodes", f"'min:max' needs 1 <= min <= max <= {MAX_NODES}")]
    if res.elastic and total is None:
        message = "an elastic node count needs global_batch_size, so that the update does not change with it"
        return [Problem(f"{path}.resources.nnodes", message)]
    if res.elastic and stage.sync_batchnorm:
        message = "SyncBatchNorm normalises over every process, whose number an elastic node count changes"
        return [Problem(f"{path}.sync_batchnorm", message)]
    if total is None:
        return []
    if stage.batch_size is not None:
        return [Problem(f"{path}.global_batch_size", "give global_batch_size or batch_size, not both")]
    if total % (most * res.nproc_per_node * stage.accumulate):
        message = (
            f"{total} clips do not divide among {most} x {res.nproc_per_node} processes x "
            f"{stage.accumulate} accumulated steps"
        )
        return [Problem(f"{path}.global_batch_size", message)]
    batch = stage.batching(most * res.nproc_per_node)[0]
    for nodes in range(fewest, most):
        if total % (nodes * res.nproc_per_node * batch):
            message = (
                f"{total} clips do not divide among {nodes} x {res.nproc_per_node} processes in batches "
                f"of {batch} (the batch per process at {most} nodes)"
            )
            return [Problem(f"{path}.global_batch_size", message)]
    return []


# What a spec may be, beyond what its fields allow: a spec is a page of YAML, and these bounds keep hostile
# input (an alias bomb, 100k nested brackets) to one line in bounded time and memory.
MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 32  # a spec's deepest field, sweep.pretrain_datasets[i][j], is 4 levels down
MAX_VALUES = 10_000  # YAML values once aliases are expanded; each of the paper's specs has < 300
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A YAML document mega3d does not read, and where."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: nesting depth, the number of values once aliases are expanded
    (aliases share nodes, so an alias bomb is small until something walks it), and no key twice in a
    mapping (PyYAML keeps the last one silently)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._path: list[str | int | None] = []  # of the node being composed; None: the root, or a key
        self._values = 0
        self._expanded: dict[int, int] = {}  # id(anchored node) -> its values, aliases expanded

    def _count(self, values: int, line: int) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            message = f"line {line}: more than {MAX_VALUES:,} values once YAML aliases are expanded"
            raise _Refused(Problem("", message))

    # `index` is the key node of a mapping's value, the position of a sequence's item, or None for a key
    # and for the document (PyYAML's stubs say int).
    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._count(self._expanded.get(id(node), 1), line)  # an anchor still open counts as one
            return node
        if len(self._path) >= MAX_DEPTH:
            raise _Refused(Problem("", f"line {line}: nested deeper than {MAX_DEPTH} levels"))
        before = self._values
        self._path.append(str(index.value) if isinstance(index, ScalarNode) else index)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._path.pop()
        self._count(1, line)
        if event.anchor is not None:
            self._expanded[id(node)] = self._values - before
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first_line: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first_line:
                path = _dotted(part for part in [*self._path, str(key.value)] if part is not None)
                first = first_line[key.tag, key.value]
                message = (
                    f"given twice, on {f'lines {first} and {line}' if first != line else f'line {line}'}"
                )
                raise _Refused(Problem(path, message))
            first_line[key.tag, key.value] = line
        return node


# YAML 1.1 (PyYAML) reads `1e-3` as a string, as it needs a dot; strict types would then refuse
# `lr: 1e-3`. YAML 1.2 reads it as a number, as this loader does.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_data(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_spec(data: Any, source: str = "<spec>") -> ExperimentSpec:
    """Validate plain data (as loaded from YAML/JSON) into a spec, or raise SpecError. Types are strict:
    `"2"` is not an integer and `"yes"` not a boolean (YAML and JSON have numbers and booleans of their
    own)."""
    if not isinstance(data, dict):
        raise SpecError(source, [Problem("", "the spec must be a mapping of fields")])
    try:
        spec = ExperimentSpec.model_validate(data, strict=True)
    except ValidationError as error:
        raise SpecError(source, validation_problems(error)) from None
    except RecursionError:  # data that contains itself, or nests deeper than Python recurses
        raise SpecError(source, [Problem("", "nested too deeply")]) from None
    problems = _reference_problems(spec)
    if problems:
        raise SpecError(source, problems)
    return spec


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read a YAML spec file (safe loader, bounded) and validate it."""
    source = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_SPEC_BYTES + 1)
        text = raw.decode()
    except OSError as error:
        raise SpecError(source, [Problem("", f"cannot read: {error.strerror or error}")]) from None
    except UnicodeDecodeError:
        raise SpecError(source, [Problem("", "cannot read: not UTF-8 text")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(source, [Problem("", f"larger than {MAX_SPEC_BYTES >> 20} MiB: not a spec")])
    try:
        data = _yaml_data(text)
    except _Refused as refused:
        raise SpecError(source, [refused.problem]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SpecError(
            source, [Problem("", f"{where}invalid YAML ({getattr(error, 'problem', error)})")]
        ) from None
    except ValueError as error:  # a scalar PyYAML resolves but cannot convert: a 5,000-digit integer
        reason = str(error).partition(":")[0][:120]
        raise SpecError(source, [Problem("", f"invalid YAML value ({reason})")]) from None
    except RecursionError:
        raise SpecError(source, [Problem("", "nested too deeply")]) from None
    return parse_spec(data, source)


def spec_from_json(text: str, source: str = "spec_json") -> ExperimentSpec:
    """Read a spec passed on as JSON (a pipeline parameter, which may have been edited in the Kubeflow UI)."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError(source, [Problem("", f"larger than {MAX_SPEC_BYTES >> 20} MiB: not a spec")])
    try:
        data = json.loads(text)
    except ValueError as error:  # JSONDecodeError, or a number too long to convert
        raise SpecError(source, [Problem("", f"invalid JSON ({str(error)[:120]})")]) from None
    except RecursionError:
        raise SpecError(source, [Problem("", "invalid JSON (nested too deeply)")]) from None
    return parse_spec(data, source)


def summary(spec: ExperimentSpec) -> str:
    pre = spec.pretrain
    pretraining = (
        f"pretrain on {'+'.join(pre.datasets)} ({pre.resources.nnodes}x{pre.resources.nproc_per_node}, "
        f"{pre.epochs} epochs), "
        if pre
        else ""
    )
    targets = ", ".join(
        f"{s.name}({s.dataset}{'' if s.init_from in spec.stage_names() else ' from ' + s.init_from})"
        for s in spec.finetune
    )
    branches = spec.branches()
    sweep = (
        f"sweep of {len(branches)} branches ({', '.join(b.name for b in branches)}); " if spec.sweep else ""
    )
    return f"{spec.name}: {spec.model.name}; {pretraining}fine-tune {targets}; {sweep}storage {spec.storage}"
