"""`pip install .`: the wheel holds the package, the configs and the five console scripts, and
installed in a fresh venv, `effnet-train` trains from any folder, its runs under ./outputs/.

Offline: the wheel is built without build isolation (the suite's setuptools), and the venv gets
the dependencies from the suite's own site-packages through a .pth file, so nothing is downloaded.
Only the site-packages folder itself is listed there, not the .pth files in it, so the suite's
editable install of effnet (a path .pth) is not seen: effnet is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import CONF_DIR, ROOT, SMALL

COMMANDS = {
    "effnet-train": "effnet.cli.commands:train",
    "effnet-eval": "effnet.cli.commands:evaluate",
    "effnet-predict": "effnet.cli.commands:predict",
    "effnet-export": "effnet.cli.commands:export",
    "effnet-bench": "effnet.cli.commands:bench",
}


def run(command: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # this checkout's src is not installed
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"  # a copy: an in-tree build leaves build/ and effnet.egg-info/ in the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp, source], cwd=tmp)
    (built,) = tmp.glob("effnet-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Path:
    venv = wheel.parent / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=wheel.parent)
    (packages,) = venv.glob("lib/python*/site-packages")
    (packages / "suite_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--no-input",
        "--python",
        venv / "bin/python",
    ]
    run([*pip, "install", "--no-deps", "--no-index", wheel], cwd=wheel.parent)
    return venv


def test_the_wheel_holds_every_config_and_the_five_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"effnet/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert len(configs) > 30 and configs <= names, sorted(configs - names)
    assert {
        "effnet/memory.csv",
        "effnet/cli/commands.py",
        "hydra_plugins/effnet_sweeper/__init__.py",
    } <= names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    lines = zipfile.ZipFile(wheel).read(entry_points).decode().splitlines()
    assert {f"{name} = {target}" for name, target in COMMANDS.items()} <= set(lines)


def test_installed_effnet_train_trains_the_demo_from_any_folder(venv, tmp_path):
    """The commands resolve in the installed package (not this checkout), and effnet-train, run
    from an empty folder, makes the demo data and the run there, reading its packaged configs."""
    check = (
        "import effnet, json, importlib.metadata as m;"
        "eps = {e.name: e for e in m.entry_points(group='console_scripts') if e.name.startswith('effnet-')};"
        "[e.load() for e in eps.values()];"
        "print(json.dumps({'file': effnet.__file__, 'conf': str(effnet.CONF_DIR), 'commands': sorted(eps)}))"
    )
    found = json.loads(run([venv / "bin/python", "-c", check], cwd=tmp_path).stdout)
    assert Path(found["file"]).is_relative_to(venv) and Path(found["conf"]).is_relative_to(venv), found
    assert found["commands"] == sorted(COMMANDS)
    assert all((venv / "bin" / name).is_file() for name in COMMANDS)

    shown = run([venv / "bin/effnet-train", "--help"], cwd=tmp_path).stdout
    assert "data.root=" in shown and "Config groups" in shown

    done = run([venv / "bin/effnet-train", "data=demo", "epochs=1", *SMALL], cwd=tmp_path)
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "outputs" / "demo_data").is_dir(), "the demo data is made in the working folder"
    assert "Traceback" not in done.stderr
