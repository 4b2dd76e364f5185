from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mega3d.cli.main import app
from mega3d.trainer.spec import SpecError, load_spec, model_names, parse_spec, spec_from_json
from tests.conftest import MEGA3D, QUICKSTART, mega3d


def quickstart_data() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_examples_load_and_read_back_as_the_pipeline_hands_them_to_the_trainer() -> None:
    for path in sorted(QUICKSTART.parent.glob("*.yaml")) + sorted(QUICKSTART.parent.glob("paper/*.yaml")):
        spec = load_spec(path)
        assert spec.stage_names()[0] == "pretrain"
        assert spec_from_json(spec.model_dump_json(exclude_none=True)) == spec, path


def test_the_papers_recipes_are_within_the_bounds() -> None:
    """Bounds reject the absurd only: 1,039 classes, ResNet-200, 4 x 8 GPUs, 200 epochs, anchors and
    merge keys all still validate."""
    paper = sorted((QUICKSTART.parent / "paper").glob("*.yaml"))
    assert len(paper) == 6
    for path in paper:
        load_spec(path)
    data = quickstart_data()
    data["model"] = {"name": "r3d-200"}
    data["pretrain"].update(epochs=200, batch_size=32, num_workers=16)
    data["pretrain"]["resources"] = {
        "nnodes": 32,
        "nproc_per_node": 8,
        "gpus": 8,
        "cpu": 224,
        "memory_gb": 1800,
    }
    data["datasets"]["motion-a"]["synthetic"]["classes"] = 1039
    assert parse_spec(data).pretrain.resources.nnodes == 32


def test_exponents_are_numbers_as_in_yaml_1_2(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(QUICKSTART.read_text().replace("lr: 0.05", "lr: 5e-2"))
    assert load_spec(path).pretrain.optimizer.lr == 0.05


def test_defaults_are_the_papers_recipe() -> None:
    data = quickstart_data()
    del data["pretrain"]["optimizer"], data["pretrain"]["schedule"], data["pretrain"]["clip"]
    pretrain = parse_spec(data).pretrain
    assert (pretrain.optimizer.lr, pretrain.optimizer.momentum, pretrain.optimizer.weight_decay) == (
        0.003,
        0.9,
        0.001,
    )
    assert (pretrain.schedule.patience, pretrain.schedule.factor) == (10, 0.1)
    assert (pretrain.clip.frames, pretrain.clip.size, pretrain.clip.flip) == (16, 112, True)
    assert pretrain.clip.scales == pytest.approx([1.0, 0.8409, 0.7071, 0.5946, 0.5], abs=1e-4)
    assert len(set(pretrain.clip.positions)) == 5
    assert (pretrain.clip.mean, pretrain.clip.std) == ((0.4345, 0.4051, 0.3775), (0.2768, 0.2713, 0.2737))


def edit(change: callable) -> dict:
    data = quickstart_data()
    change(data)
    return data


MISTAKES = {
    "bf16 on CPU": (
        lambda d: d["finetune"][0].update(precision="bf16"),
        "finetune[0].precision: bf16 needs GPUs (gpus: 0)",
    ),
    "negative seed": (
        lambda d: d["datasets"]["motion-a"]["synthetic"].update(seed=-1),
        "datasets.motion-a.synthetic.seed: Input should be greater than or equal to 0",
    ),
    "infinite speed": (
        lambda d: d["datasets"]["motion-a"]["synthetic"].update(speed=float("inf")),
        "datasets.motion-a.synthetic.speed: Input should be a finite number",
    ),
    "SyncBatchNorm on CPU": (
        lambda d: d["pretrain"].update(sync_batchnorm=True),
        "pretrain.sync_batchnorm: SyncBatchNorm needs GPUs (gpus: 0)",
    ),
    "multistep without milestones": (
        lambda d: d["pretrain"]["schedule"].update(kind="multistep"),
        "pretrain.schedule.milestones: multistep needs the epochs at which lr drops",
    ),
    "milestones out of order": (
        lambda d: d["pretrain"]["schedule"].update(kind="multistep", milestones=[20, 10]),
        "pretrain.schedule.milestones: must increase",
    ),
    "warm-up as long as training": (
        lambda d: d["finetune"][0]["schedule"].update(warmup_epochs=12),
        "finetune[0].schedule.warmup_epochs: must be fewer than the 12 epochs",
    ),
    "nesterov without momentum": (
        lambda d: d["pretrain"]["optimizer"].update(nesterov=True, momentum=0),
        "pretrain.optimizer.nesterov: needs momentum > 0",
    ),
    "global batch that does not divide": (
        lambda d: (
            d["pretrain"].update(global_batch_size=30, accumulate=2, batch_size=None)
            or d["pretrain"].pop("batch_size")
        ),
        "pretrain.global_batch_size: 30 clips do not divide among 2 x 1 processes x 2 accumulated steps",
    ),
    "elastic nodes that cannot share the global batch": (
        lambda d: (
            d["pretrain"].pop("batch_size"),
            d["pretrain"].update(global_batch_size=32),
            d["pretrain"]["resources"].update(nnodes="2:4"),
        ),
        "pretrain.global_batch_size: 32 clips do not divide among 3 x 1 processes in batches of 8 (the batch "
        "per process at 4 nodes)",
    ),
    "elastic nodes without a global batch": (
        lambda d: d["pretrain"]["resources"].update(nnodes="1:2"),
        "pretrain.resources.nnodes: an elastic node count needs global_batch_size",
    ),
    "an elastic range upside down": (
        lambda d: d["pretrain"]["resources"].update(nnodes="4:2"),
        "pretrain.resources.nnodes: 'min:max' needs 1 <= min <= max <= 1024",
    ),
    "a node count that is neither": (
        lambda d: d["pretrain"]["resources"].update(nnodes="2-4"),
        "pretrain.resources.nnodes: must be a number of nodes, or 'min:max'",
    ),
    "global and per-process batch": (
        lambda d: d["pretrain"].update(global_batch_size=32),
        "pretrain.global_batch_size: give global_batch_size or batch_size, not both",
    ),
    "dataset twice": (
        lambda d: d["pretrain"]["datasets"].append("motion-a"),
        "pretrain.datasets[2]: 'motion-a' is listed twice",
    ),
    "more processes than GPUs": (
        lambda d: d["finetune"][0]["resources"].update(gpus=2, nproc_per_node=4),
        "finetune[0].resources.nproc_per_node: 4 processes per node but 2 GPUs",
    ),
    "reserved stage name": (
        lambda d: d["finetune"][0].update(name="data"),
        "finetune[0].name: stage name 'data' is already used",
    ),
    "option of another family": (
        lambda d: d["model"].update(cardinality=8),
        "model.cardinality: r3d models take no 'cardinality' option",
    ),
    "crop scale above 1": (
        lambda d: d["pretrain"]["clip"].update(scales=[1.0, 1.5]),
        "pretrain.clip.scales[1]: Input should be less than or equal to 1",
    ),
    "no crop positions": (
        lambda d: d["pretrain"]["clip"].update(positions=[]),
        "pretrain.clip.positions: List should have at least 1 item",
    ),
    "unknown crop position": (
        lambda d: d["pretrain"]["clip"].update(positions=["middle"]),
        "pretrain.clip.positions[0]: Input should be 'center', 'top-left'",
    ),
    "zero std": (
        lambda d: d["finetune"][0].setdefault("clip", {}).update(std=[0.2, 0, 0.2]),
        "finetune[0].clip.std[1]: Input should be greater than 0",
    ),
    "two-channel mean": (
        lambda d: d["pretrain"]["clip"].update(mean=[0.4, 0.4]),
        "pretrain.clip.mean[2]: required field is missing",
    ),
    "unknown sweep family": (
        lambda d: d.update(sweep={"family": ["r3d", "r4d"]}),
        "sweep.family[1]: unknown family 'r4d'",
    ),
    "sweep depth that is no model": (
        lambda d: d.update(sweep={"depth": [10, 19]}),
        "sweep.depth: r3d-19 is not a model",
    ),
    "sweep value twice": (
        lambda d: d.update(sweep={"category_fraction": [0.5, 0.5]}),
        "sweep.category_fraction[1]: 0.5 is listed twice",
    ),
    "sweep of an unknown dataset": (
        lambda d: d.update(sweep={"pretrain_datasets": [["motion-a"], ["kinetics"]]}),
        "sweep.pretrain_datasets[1][0]: unknown dataset 'kinetics'",
    ),
    "scratch with a freeze point": (
        lambda d: d["finetune"][0].update(init_from="scratch"),
        "finetune[0].train_from: training from scratch trains every module: leave it unset",
    ),
    "unknown field": (lambda d: d["pretrain"].update(epoch=3), "pretrain.epoch: unknown field"),
    "wrong type": (lambda d: d["pretrain"].update(batch_size="many"), "pretrain.batch_size: Input should be"),
    "negative epochs": (
        lambda d: d["finetune"][0].update(epochs=-2),
        "finetune[0].epochs: Input should be greater",
    ),
    "zero nodes": (lambda d: d["pretrain"]["resources"].update(nnodes=0), "pretrain.resources.nnodes:"),
    "unknown dataset": (
        lambda d: d["pretrain"]["datasets"].append("kinetics"),
        "pretrain.datasets[2]: unknown dataset",
    ),
    "unknown target": (
        lambda d: d["finetune"][0].update(dataset="ucf"),
        "finetune[0].dataset: unknown dataset 'ucf'",
    ),
    "unknown architecture": (
        lambda d: d["model"].update(name="r3d-19"),
        "model.name: unknown architecture 'r3d-19'",
    ),
    "unknown module": (
        lambda d: d["finetune"][0].update(train_from="layer9"),
        "finetune[0].train_from: r3d-10 has no stage 'layer9'",
    ),
    "bad init_from": (
        lambda d: d["finetune"][0].update(init_from="later"),
        "finetune[0].init_from: 'later' is neither the pretrain stage, scratch, nor a checkpoint URI",
    ),
    "missing field": (lambda d: d.pop("storage"), "storage: required field is missing"),
    # Bounds: the absurd is refused here, not deep in an optimizer or a scheduler.
    "learning rate of 1e300": (
        lambda d: d["pretrain"]["optimizer"].update(lr=1e300),
        "pretrain.optimizer.lr: Input should be less than or equal to 10 (got 1e+300)",
    ),
    "momentum of 1": (
        lambda d: d["pretrain"]["optimizer"].update(momentum=1),
        "pretrain.optimizer.momentum: Input should be less than 1",
    ),
    "weight decay of 5": (
        lambda d: d["finetune"][0]["optimizer"].update(weight_decay=5),
        "finetune[0].optimizer.weight_decay: Input should be less than or equal to 1",
    ),
    "a billion epochs": (
        lambda d: d["pretrain"].update(epochs=10**9),
        "pretrain.epochs: Input should be less than or equal to 10000",
    ),
    "10,000-frame clips": (
        lambda d: d["pretrain"]["clip"].update(frames=10_000),
        "pretrain.clip.frames: Input should be less than or equal to 1024",
    ),
    "a 100k-pixel crop": (
        lambda d: d["pretrain"]["clip"].update(size=100_000),
        "pretrain.clip.size: Input should be less than or equal to 1024",
    ),
    "a mean outside [0, 1]": (
        lambda d: d["pretrain"]["clip"].update(mean=[0.4, 255, 0.4]),
        "pretrain.clip.mean[1]: Input should be less than or equal to 1",
    ),
    "a million nodes": (
        lambda d: d["pretrain"]["resources"].update(nnodes=10**6),
        "pretrain.resources.nnodes: must be 1 to 1024 nodes",
    ),
    "a million processes per node": (
        lambda d: d["pretrain"]["resources"].update(nproc_per_node=10**6),
        "pretrain.resources.nproc_per_node: Input should be less than or equal to 256",
    ),
    "1,000 GPUs per node": (
        lambda d: d["pretrain"]["resources"].update(gpus=1000, nproc_per_node=1000),
        "pretrain.resources.gpus: Input should be less than or equal to 64",
    ),
    "a million CPUs": (
        lambda d: d["pretrain"]["resources"].update(cpu=10**6),
        "pretrain.resources.cpu: Input should be less than or equal to 4096",
    ),
    "an exabyte of memory": (
        lambda d: d["pretrain"]["resources"].update(memory_gb=10**9),
        "pretrain.resources.memory_gb: Input should be less than or equal to 65536",
    ),
    "a batch of 10 million": (
        lambda d: d["finetune"][0].update(batch_size=10**7),
        "finetune[0].batch_size: Input should be less than or equal to 65536",
    ),
    "10,000 workers": (
        lambda d: d["pretrain"].update(num_workers=10_000),
        "pretrain.num_workers: Input should be less than or equal to 256",
    ),
    "a patience of 10**12 epochs": (
        lambda d: d["pretrain"]["schedule"].update(patience=10**12),
        "pretrain.schedule.patience: Input should be less than or equal to 10000",
    ),
    "a seed beyond 32 bits": (
        lambda d: d["pretrain"].update(seed=2**40),
        "pretrain.seed: Input should be less than or equal to 4294967295",
    ),
    "a sweep fraction above 1": (
        lambda d: d.update(sweep={"category_fraction": [0.5, 1.5]}),
        "sweep.category_fraction[1]: Input should be less than or equal to 1",
    ),
    "100,000 synthetic classes": (
        lambda d: d["datasets"]["motion-a"]["synthetic"].update(classes=100_000),
        "datasets.motion-a.synthetic.classes: Input should be less than or equal to 10000",
    ),
    # Strict types: YAML has numbers and booleans of its own; a string is not one.
    "a number given as a string": (
        lambda d: d["pretrain"].update(epochs="2"),
        'pretrain.epochs: Input should be a valid integer (got "2")',
    ),
    "a boolean given as a string": (
        lambda d: d["pretrain"]["clip"].update(flip="yes"),
        'pretrain.clip.flip: Input should be a valid boolean (got "yes")',
    ),
    "a boolean given as a number": (
        lambda d: d["pretrain"].update(channels_last=1),
        "pretrain.channels_last: Input should be a valid boolean (got 1)",
    ),
    # Relative URIs are under storage, and stay there.
    "a dataset outside storage": (
        lambda d: d["datasets"]["motion-a"].update(uri="../../etc"),
        "datasets.motion-a.uri: '../../etc' is not under storage",
    ),
    "a synthetic dataset that climbs out": (
        lambda d: d["datasets"]["motion-b"].update(uri="datasets/../../../tmp/x"),
        "datasets.motion-b.uri: 'datasets/../../../tmp/x' is not under storage",
    ),
    "a dataset that is storage itself": (
        lambda d: d["datasets"]["motion-c"].update(uri="./"),
        "datasets.motion-c.uri: './' is not under storage",
    ),
    "a checkpoint outside storage": (
        lambda d: d["finetune"][0].update(init_from="../other-run/checkpoint.pt"),
        "finetune[0].init_from: '../other-run/checkpoint.pt' is not under storage",
    ),
    "not DNS-safe": (
        lambda d: d.update(name="Quick Start"),
        "name: must be lowercase letters, digits and '-'",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_mistake_names_its_dotted_path_and_exits_2(mistake: str, tmp_path: Path) -> None:
    change, expected = MISTAKES[mistake]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(edit(change)))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"error: {path}: {expected}") for line in lines), lines
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [path]  # validating writes nothing


def _quickstart_with(old: str, new: str) -> str:
    text = QUICKSTART.read_text()
    assert text.count(old) == 1
    return text.replace(old, new)


def _line_of(text: str, fragment: str, nth: int = 0) -> int:
    return [i for i, line in enumerate(text.splitlines(), 1) if fragment in line][nth]


# A few lines that grow into 9**9 values (aliases share their nodes until walked): 9**5 > 10,000 on line 7.
ALIAS_BOMB = "name: bomb\nstorage: s\na0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
# Merge keys copy the merged mapping's entries: this one doubles them at each level (past 10,000 on line 13).
MERGE_BOMB = "name: bomb\nstorage: s\nm0: &m0 {a: 1, b: 2}\n" + "".join(
    f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}\n" for i in range(1, 40)
)
TWICE_TOP = QUICKSTART.read_text() + "name: again\n"
TWICE_NESTED = _quickstart_with("  epochs: 30\n", "  epochs: 30\n  batch_size: 8\n  epochs: 3\n")

# Hostile documents: each refused with one line, in bounded time and memory.
HOSTILE = {
    "alias bomb": (ALIAS_BOMB, "line 7: more than 10,000 values once YAML aliases are expanded"),
    "merge-key bomb": (MERGE_BOMB, "line 13: more than 10,000 values once YAML aliases are expanded"),
    "100k nested brackets": (
        "name: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "line 1: nested deeper than 32",
    ),
    "100k nested mappings": ("a: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n", "line 1: nested deeper"),
    "a key twice": (TWICE_TOP, f"name: given twice, on lines 3 and {len(TWICE_TOP.splitlines())}"),
    "a nested key twice": (
        TWICE_NESTED,
        f"pretrain.epochs: given twice, on lines {_line_of(TWICE_NESTED, 'epochs: 30')} and "
        f"{_line_of(TWICE_NESTED, 'epochs: 3', 1)}",
    ),
    "a key twice in a flow mapping": (
        _quickstart_with(
            "\n  clip: {frames: 8, size: 32, flip: false}", "\n  clip: {frames: 8, size: 32, frames: 4}"
        ),
        f"pretrain.clip.frames: given twice, on line {_line_of(QUICKSTART.read_text(), 'frames: 8')}",
    ),
    "a 5,000-digit integer": ("name: " + "9" * 5000 + "\n", "invalid YAML value (Exceeds the limit"),
    "a spec that contains itself": (
        _quickstart_with("name: quickstart", "name: &self [*self]"),
        "name: Input should be a valid string (got [[[[[[[[",
    ),
    "a 2 MiB spec": (QUICKSTART.read_text() + "#" * (2 << 20) + "\n", "larger than 1 MiB: not a spec"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_specs_are_one_line_in_bounded_time(case: str, tmp_path: Path) -> None:
    text, expected = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    result = subprocess.run(
        [MEGA3D, "validate", str(path)], capture_output=True, text=True, timeout=20, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {expected}"), result.stderr[-2000:]
    assert result.stdout == "" and list(tmp_path.iterdir()) == [path]


def test_merge_keys_still_override_what_they_merge(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        _quickstart_with(
            "finetune:\n  - name: motion-c\n", "finetune:\n  - &stage\n    name: motion-c\n"
        ).replace("evaluation:", "  - {<<: *stage, name: motion-d}\nevaluation:")
    )
    assert [stage.name for stage in load_spec(path).finetune] == ["motion-c", "motion-d"]


def test_json_specs_are_bounded_too() -> None:
    for text, expected in [
        ("[" * 100_000 + "]" * 100_000, r"spec_json: invalid JSON \(nested too deeply\)"),
        ('{"name": ' + "9" * 5000 + "}", r"spec_json: invalid JSON \(Exceeds the limit"),
        ("{}" + " " * (2 << 20), "spec_json: larger than 1 MiB"),
    ]:
        with pytest.raises(SpecError, match=expected) as caught:
            spec_from_json(text)
        assert len(caught.value.lines()) == 1


def test_every_problem_is_reported_at_once() -> None:
    def two_mistakes(d: dict) -> None:
        d["pretrain"]["epochs"] = 0
        d["image"] = 3

    with pytest.raises(SpecError) as caught:
        parse_spec(edit(two_mistakes), "bad.yaml")
    paths = sorted(line.split(": ")[1] for line in caught.value.lines())
    assert paths == ["image", "pretrain.epochs"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: [unclosed", "line 1: invalid YAML"),
        ("- just\n- a list\n", "the spec must be a mapping"),
    ],
)
def test_unreadable_specs(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=expected):
        load_spec(path)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = mega3d("validate", str(QUICKSTART))
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("ok quickstart: r3d-10; pretrain on motion-a+motion-b (2x1")

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(edit(lambda d: d["pretrain"]["resources"].update(nnodes=-1, gpus="x"))))
    result = mega3d("validate", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {bad}: pretrain.resources.") for line in lines)
    assert "Traceback" not in result.stderr + result.stdout

    missing = mega3d("validate", str(tmp_path / "nowhere.yaml"))
    assert missing.returncode == 2 and "cannot read: No such file" in missing.stderr


def test_model_names_cover_every_depth() -> None:
    assert "r3d-10" in model_names() and "r3d-200" in model_names()


def test_reference_aliases_are_accepted_and_canonicalised() -> None:
    spec = parse_spec(edit(lambda d: d["model"].update(name="resnet2p1d-18")))
    assert spec.model.name == "r2plus1d-18"
    assert spec.model.options() == {"widen_factor": 0.25}


def test_finetuning_published_checkpoints_needs_no_pretraining() -> None:
    def without_pretraining(d: dict) -> None:
        del d["pretrain"]
        d["finetune"][0]["init_from"] = "checkpoints/r3d10_K_200ep.pth"

    spec = parse_spec(edit(without_pretraining))
    assert spec.stage_names() == ["motion-c"]
    assert spec.under_storage(spec.finetune[0].init_from) == "runs/quickstart/checkpoints/r3d10_K_200ep.pth"

    expected = r"finetune\[0\].init_from: 'pretrain' is neither the pretrain stage \(the spec has none\)"
    with pytest.raises(SpecError, match=expected):
        parse_spec(edit(lambda d: d.pop("pretrain")), "bad.yaml")


def test_spec_json_is_validated_too() -> None:
    spec = parse_spec(quickstart_data())
    assert spec_from_json(spec.model_dump_json()) == spec
    broken = spec.model_dump()
    broken["finetune"][0]["dataset"] = "gone"
    with pytest.raises(SpecError, match=r"spec_json: finetune\[0\].dataset: unknown dataset 'gone'"):
        spec_from_json(json.dumps(broken))
    with pytest.raises(SpecError, match="spec_json: invalid JSON"):
        spec_from_json("{not json")


def test_a_spec_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SpecError, match="cannot read: not UTF-8 text"):
        load_spec(path)


def test_a_sweep_expands_into_named_branches() -> None:
    data = quickstart_data()
    data["sweep"] = {
        "pretrain_datasets": [[], ["motion-a"]],
        "depth": [10, 18],
        "instance_fraction": [0.5, 1],
    }
    spec = parse_spec(data)
    names = [branch.name for branch in spec.branches()]
    assert names == [
        "scratch_r3d-10", "scratch_r3d-18",
        "motion-a_r3d-10_i50", "motion-a_r3d-10_i100", "motion-a_r3d-18_i50", "motion-a_r3d-18_i100",
    ]  # fmt: skip
    scratch = spec.for_branch(spec.branches()[1])
    assert scratch.pretrain is None and scratch.model.name == "r3d-18"
    assert (scratch.finetune[0].init_from, scratch.finetune[0].train_from) == ("scratch", None)
    assert parse_spec(scratch.model_dump(exclude_none=True)) == scratch  # a branch's spec is a valid spec
    with pytest.raises(SpecError, match="sweep: expands to 6 branches, more than max_branches 5"):
        spec.check_branches(5, "spec")


def test_a_global_batch_is_shared_by_processes_and_accumulated_steps() -> None:
    data = quickstart_data()
    del data["pretrain"]["batch_size"]
    data["pretrain"].update(global_batch_size=64, accumulate=4)  # 2 nodes x 1 process
    assert parse_spec(data).pretrain.batching(2) == (8, 4)
    assert parse_spec(data).pretrain.batching(1) == (8, 8)  # by hand, on one process: the same update
    assert parse_spec(quickstart_data()).pretrain.batching(5) == (16, 1)  # batch_size as given


def test_elastic_nodes_keep_the_batch_per_process_and_accumulate_the_rest() -> None:
    data = quickstart_data()
    del data["pretrain"]["batch_size"]
    data["pretrain"].update(global_batch_size=48, accumulate=1)
    data["pretrain"]["resources"].update(nnodes="2:4", nproc_per_node=2)
    with pytest.raises(SpecError, match="48 clips do not divide among 3 x 2 processes in batches of 6"):
        parse_spec(data)
    data["pretrain"]["resources"].update(nnodes="3:4")
    data["pretrain"].update(global_batch_size=96, accumulate=3)  # batches of 4: 4 x 3 at 4 nodes, 4 x 4 at 3
    stage = parse_spec(data).pretrain
    assert stage.resources.node_range == (3, 4) and stage.resources.elastic
    assert [stage.batching(nodes * 2) for nodes in (3, 4)] == [(4, 4), (4, 3)]
