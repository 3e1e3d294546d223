"""requirements.lock against pyproject.toml, this environment and this machine's pip caps
(scripts/lock.py writes it; `make` installs from it)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts import lock

ROOT = Path(__file__).resolve().parents[1]
PROJECT = lock.tomllib.loads(lock.PYPROJECT.read_text())["project"]


def project_requirements() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in lock.EXTRAS.split(","):
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


def test_lock_was_written_from_this_pyproject():
    assert lock.read_digest() == lock.pyproject_digest(), (
        "pyproject.toml's dependencies changed since requirements.lock was written: run `make lock`"
    )
    assert lock.main(["--check"]) == 0


def test_the_digest_notices_a_changed_dependency(tmp_path):
    edited = tmp_path / "pyproject.toml"
    edited.write_text(lock.PYPROJECT.read_text().replace('"timm>=', '"timm>=0.1,!=0.2,'))
    assert edited.read_text() != lock.PYPROJECT.read_text()
    assert lock.pyproject_digest(edited) != lock.read_digest()


def test_every_requirement_is_pinned_within_its_range():
    pins = lock.read_pins()
    for req in project_requirements():
        name = lock.normalise(req.name)
        assert name in pins, f"{req} has no pin in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {req}: run `make lock`"
        )


def test_the_lock_is_closed_over_what_make_installs():
    """Every distribution effnet's requirements pull in here (transitively) has a pin."""
    pins, seen, missing = lock.read_pins(), set(), []
    todo = [(req, set(lock.EXTRAS.split(","))) for req in project_requirements()]
    while todo:
        req, extras = todo.pop()
        env = [{"extra": e} for e in extras or {""}]
        if req.marker and not any(req.marker.evaluate(e) for e in env):
            continue
        name = lock.normalise(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name not in pins:
            missing.append(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not needed on this platform; the constraints file pins without installing
        todo += [(Requirement(r), set(req.extras)) for r in requires]
    assert not missing, f"installed but not in requirements.lock: {sorted(missing)}; run `make lock`"
    assert {"torch", "torchvision", "lightning", "timm", "optuna", "hydra-core"} <= seen


def pip_caps() -> list[Requirement]:
    """The constraints this machine's pip configuration applies to every install (none on most)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    files = [m.group(1) for m in re.finditer(r"constraint='([^']+)'", out)]
    caps = []
    for f in files:
        if Path(f).is_file():
            caps += [
                Requirement(line) for line in Path(f).read_text().splitlines() if line.split("#")[0].strip()
            ]
    return caps


def test_the_lock_installs_under_this_machines_pip_caps():
    caps = pip_caps()
    if not caps:
        pytest.skip("this machine's pip configuration caps no version")
    pins = lock.read_pins()
    for cap in caps:
        pinned = pins.get(lock.normalise(cap.name))
        assert pinned is None or cap.specifier.contains(pinned, prereleases=True), (
            f"requirements.lock pins {cap.name}=={pinned}, but this machine's pip refuses it ({cap}): "
            f"the lock must install on capped machines; resolve it on one (`make lock`)"
        )


def test_the_lock_pins_pip_and_the_makefile_installs_with_it():
    assert "pip" in lock.read_pins()
    recipe = (ROOT / "Makefile").read_text().split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all("-c $(LOCK)" in line for line in installs), installs
