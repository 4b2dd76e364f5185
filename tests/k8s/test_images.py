"""The Dockerfiles of k8s/images. No Docker daemon here: they are read, and the Python they run is run.

The essentials of a lint: base images pinned to an exact version or a digest, a numeric non-root USER last,
no ADD of URLs, nothing secret-looking in ENV or ARG. Then what each build does: the trainer keeps its base
image's CUDA torch (and refuses a base without one), the launcher installs mega3d's dependencies less the
training-only ones, and the steps' and CLI's modules import without those.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "k8s" / "images"
TRAINER = IMAGES / "trainer.Dockerfile"
LAUNCHER = IMAGES / "launcher.Dockerfile"
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))

SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE
)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|gh[pousr]_[A-Za-z0-9]{20,}|AIza[0-9A-Za-z_-]{30,}")
EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuations joined and comments dropped, as Docker reads them."""
    result = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        keyword, _, arguments = (current + stripped).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        current = ""
    return result


def variables(arguments: str) -> dict[str, str]:
    """The names and values of an ENV or ARG instruction (`A=1 B=2`, `A 1` or a bare `A`)."""
    words = shlex.split(arguments)
    if words and "=" not in words[0] and len(words) > 1:
        return {words[0]: " ".join(words[1:])}
    return {name: value for name, _, value in (word.partition("=") for word in words)}


def is_pinned(image: str) -> bool:
    if DIGEST.search(image):
        return True
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    return bool(tag) and tag != "latest" and bool(EXACT_VERSION.match(tag))


def problems(text: str) -> list[str]:
    found = []
    stages: set[str] = set()
    user = None
    for keyword, arguments in instructions(text):
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            image = words[0]
            if "$" in image:
                found.append(f"FROM {image}: the base image is chosen by a variable, not pinned in the file")
            elif image not in stages and not is_pinned(image):
                found.append(f"FROM {image}: not pinned to an exact version tag or a digest")
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
            user = None  # each stage starts as the base image's user
        elif keyword == "USER":
            user = arguments
        elif keyword == "ADD" and re.search(r"\b(https?|ftp)://|git@", arguments):
            found.append(f"ADD {arguments}: fetches from the network at build time (unpinned, unchecked)")
        elif keyword in ("ENV", "ARG"):
            for name, value in variables(arguments).items():
                if SECRET_NAME.search(name) or SECRET_VALUE.search(value):
                    found.append(f"{keyword} {name}: looks like a secret, which would stay in the image")
    if user is None:
        found.append("no USER: the image runs as root")
    elif not re.fullmatch(r"[1-9]\d*(:\d+)?", user):
        found.append(
            f"USER {user}: not a numeric non-root user (Kubernetes verifies runAsNonRoot only for those)"
        )
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfiles_pass_the_lint(dockerfile: Path) -> None:
    assert problems(dockerfile.read_text()) == []


GOOD = "FROM python:3.11.14-slim-bookworm\nWORKDIR /app\nUSER 10001\n"
BAD = {
    "latest": GOOD.replace("3.11.14-slim-bookworm", "latest"),
    "untagged": GOOD.replace(":3.11.14-slim-bookworm", ""),
    "moving tag": GOOD.replace("3.11.14-slim-bookworm", "3.11-slim"),
    "root": GOOD.replace("USER 10001", "USER root"),
    "uid 0": GOOD.replace("USER 10001", "USER 0"),
    "named user": GOOD.replace("USER 10001", "USER mega3d"),
    "no user": GOOD.replace("USER 10001\n", ""),
    "root again": GOOD + "USER 0\n",
    "new stage as root": GOOD + "FROM python:3.11.14-slim-bookworm\n",
    "add url": GOOD + "ADD https://example.com/model.pt /app/\n",
    "secret env": GOOD + "ENV AWS_SECRET_ACCESS_KEY=abc\n",
    "token arg": GOOD + "ARG HF_TOKEN=hf_abc\n",
    "key value": GOOD + "ENV BOOT=AKIAABCDEFGHIJKLMNOP\n",
}


def test_the_lint_passes_a_good_dockerfile() -> None:
    assert problems(GOOD) == []
    assert problems("FROM python:3.11.14-slim AS build\nFROM build\nUSER 10001:10001\n") == []
    assert problems(f"FROM ubuntu@sha256:{'a' * 64}\nUSER 10001\n") == []


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_lint_catches_mistakes(case: str) -> None:
    assert problems(BAD[case]) != []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_each_image_sets_its_basics(dockerfile: Path) -> None:
    steps = instructions(dockerfile.read_text())
    environment = {
        name: value for kw, args in steps if kw == "ENV" for name, value in variables(args).items()
    }
    assert environment["PYTHONUNBUFFERED"] == "1"
    assert [kw for kw, _ in steps].count("WORKDIR") >= 1
    assert [args for kw, args in steps if kw == "USER"][-1] == "10001"
    assert "ADD" not in [kw for kw, _ in steps]


def copied_sources(dockerfile: Path) -> list[str]:
    return [
        source
        for keyword, arguments in instructions(dockerfile.read_text())
        if keyword == "COPY" and "--from" not in arguments
        for source in arguments.split()[:-1]
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_what_an_image_copies_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "**"  # an allow-list: nothing goes into the context unless named
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for source in copied_sources(dockerfile):
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is left out of the build context by .dockerignore"


def test_the_build_context_holds_every_package() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        package = pattern.rstrip("*")
        assert package in copied_sources(TRAINER) and package in copied_sources(LAUNCHER)


# What the builds run.


def python_snippets(dockerfile: Path) -> list[tuple[str, list[str]]]:
    """Every `python -c CODE ARGS...` in the RUN instructions: the code and its (unexpanded) arguments."""
    snippets = []
    for keyword, arguments in instructions(dockerfile.read_text()):
        if keyword != "RUN":
            continue
        lexer = shlex.shlex(arguments, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # `$NAME` and `-c` stay words
        words = list(lexer)
        for i, word in enumerate(words[:-2]):
            if word == "python" and words[i + 1] == "-c":
                rest = []
                for argument in words[i + 3 :]:
                    if argument in ("&&", ";", "|", ">", ">>", "||"):
                        break
                    rest.append(argument)
                snippets.append((words[i + 2], rest))
    return snippets


def arg_default(dockerfile: Path, name: str) -> str:
    for keyword, arguments in instructions(dockerfile.read_text()):
        if keyword == "ARG" and name in variables(arguments):
            return variables(arguments)[name]
    raise AssertionError(f"no ARG {name} in {dockerfile.name}")


def snippet(dockerfile: Path, containing: str) -> tuple[str, list[str]]:
    found = [(code, args) for code, args in python_snippets(dockerfile) if containing in code]
    assert len(found) == 1, f"{dockerfile.name}: {len(found)} python -c snippets with {containing!r}"
    return found[0]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def dependencies() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None
    return match[0].lower()


def pinned_torch() -> str:
    return next(
        line.split("==")[1]
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )


def test_the_trainer_base_image_carries_the_pinned_torch() -> None:
    image = next(arguments for keyword, arguments in instructions(TRAINER.read_text()) if keyword == "FROM")
    assert image.startswith("pytorch/pytorch:")
    assert re.match(rf"{re.escape(pinned_torch())}-cuda\d+\.\d+-cudnn\d+-runtime", image.partition(":")[2])


def test_the_trainer_build_refuses_a_torch_without_cuda_or_of_another_version() -> None:
    # This machine's torch is the pinned version's CPU build: exactly what the build must not accept.
    code, _ = snippet(TRAINER, "base image torch")
    for version in (pinned_torch(), "1.0.0"):
        refused = run_python(code, version)
        assert refused.returncode != 0 and "base image torch" in refused.stderr, refused.stderr


def test_the_trainer_installs_every_dependency_and_the_launcher_all_but_the_training_only_ones() -> None:
    code, _ = snippet(TRAINER, "tomllib")
    assert run_python(code).stdout.splitlines() == dependencies()
    training_only = arg_default(LAUNCHER, "TRAINING_ONLY").split()
    assert "torch" in training_only
    assert set(training_only) <= {distribution(d) for d in dependencies()}, "a stale name in TRAINING_ONLY"
    code, arguments = snippet(LAUNCHER, "tomllib")
    assert arguments == ["$TRAINING_ONLY"]
    installed = run_python(code, *training_only).stdout.splitlines()
    assert installed == [d for d in dependencies() if distribution(d) not in training_only]


BLOCK_IMPORTS = """
import importlib.abc, sys
blocked = set(sys.argv[1:])
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not in the launcher image")
        return None
sys.meta_path.insert(0, Block())
"""


def test_the_launcher_images_modules_import_without_the_training_only_packages() -> None:
    training_only = arg_default(LAUNCHER, "TRAINING_ONLY").split()
    modules = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if any(dist.lower() in training_only for dist in dists)
    }
    assert "torch" in modules
    code, _ = snippet(LAUNCHER, "import mega3d.pipelines.steps")
    imported = run_python(BLOCK_IMPORTS + code, *sorted(modules))
    assert imported.returncode == 0, imported.stderr
    # The same check, with a module the CLI does need, fails: the blocking works.
    broken = run_python(BLOCK_IMPORTS + code, "kfp")
    assert broken.returncode != 0 and "kfp is not in the launcher image" in broken.stderr


def test_the_launcher_build_fails_if_a_training_only_package_came_in_anyway() -> None:
    # Installed here (this environment trains too), so the launcher build's check must refuse them.
    code, arguments = snippet(LAUNCHER, "find_spec")
    assert arguments == ["$TRAINING_ONLY"]
    training_only = arg_default(LAUNCHER, "TRAINING_ONLY").split()
    refused = run_python(code, *training_only)
    assert refused.returncode != 0 and "torch" in refused.stderr
    assert run_python(code, "no_such_module_here").returncode == 0
