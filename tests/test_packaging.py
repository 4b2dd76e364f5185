"""mega3d installs one top-level import name, `mega3d`: its parts never shadow, nor are shadowed by, the
packages named `trainer`, `pipelines`, `components` or `cli` that users keep in their own repositories."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import ROOT

PARTS = ("trainer", "pipelines", "components", "cli")


def test_from_a_neutral_directory_only_mega3d_is_importable(tmp_path: Path) -> None:
    probe = (
        "import importlib.util\n"
        f"print([name for name in {PARTS!r} if importlib.util.find_spec(name)])\n"
        "import mega3d.trainer.spec, mega3d.pipelines.settings, mega3d.cli.console, mega3d.components.train\n"
        "print(mega3d.trainer.spec.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    shadowed, spec_file = result.stdout.splitlines()
    assert shadowed == "[]"
    assert Path(spec_file) == ROOT / "mega3d" / "trainer" / "spec.py"


def test_the_wheel_holds_nothing_outside_the_mega3d_package(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository
    shutil.copytree(ROOT / "mega3d", source / "mega3d", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*build, "--wheel-dir", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("mega3d-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert top_level == {"mega3d"}
    for part in PARTS:
        assert f"mega3d/{part}/__init__.py" in names
    assert "mega3d/trainer/model_stats.json" in names
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "mega3d = mega3d.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
