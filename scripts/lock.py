"""Write requirements.lock: every package `make` installs, pinned to the version pip resolves today.

    make lock                  # = .venv/bin/python scripts/lock.py
    python scripts/lock.py --check   # exit 1 when pyproject.toml changed since the lock was written

Why pip's own resolver and a constraints file (not uv.lock): pip is what `make`, the Docker image and
most users install with, and only pip honours the machine's own pip configuration. Machines of the
kind the project runs on cap torch there (torch<=2.14.1 in /etc/xdg/pip); `pip install --dry-run
--report` resolves under those caps, so the lock written on such a machine installs both on it and on
one without caps. uv ignores pip's configuration and would lock a torch those machines refuse.

The lock is a pip constraints file (`pip install -c requirements.lock ...`): it pins versions without
adding packages, so a pin that a platform does not need (the CUDA libraries on macOS) is ignored there.
Its header carries a digest of pyproject.toml's dependency tables; tests/test_lock.py fails when they
no longer match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
# The extras `make` installs; the Docker image installs the same less dev (tests/test_docker.py).
EXTRAS = "dev,weights,slurm"
DIGEST_KEY = "# pyproject-digest: "


def pyproject_digest(pyproject: Path = PYPROJECT) -> str:
    """sha256 of what the lock depends on: requires-python, dependencies and optional-dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    inputs = {k: project.get(k) for k in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def read_pins(lock: Path = LOCK) -> dict[str, str]:
    """{normalised name: version} of every `name==version` line."""
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def read_digest(lock: Path = LOCK) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_KEY):
            return line[len(DIGEST_KEY) :].strip()
    return None


def normalise(name: str) -> str:
    """PEP 503: Foo_Bar and foo-bar are one project."""
    return "-".join(name.lower().replace("_", "-").replace(".", "-").split("-"))


def resolve() -> dict[str, str]:
    """What `pip install .[EXTRAS]` would install into an empty environment, under pip's own config."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
            + ["--report", str(report), f"{ROOT}[{EXTRAS}]"],
            check=True,
        )
        items = json.loads(report.read_text())["install"]
    name = normalise(tomllib.loads(PYPROJECT.read_text())["project"]["name"])
    pins = {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    pins.pop(name, None)
    # pip itself: `make` upgrades it first, to this version, so resolution is the same everywhere.
    pins["pip"] = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    return pins


def write(pins: dict[str, str]) -> None:
    head = [
        "# requirements.lock: the versions `make` installs (pip install -c requirements.lock -e .[dev,...]).",
        "# Written by `make lock` (scripts/lock.py) with pip's resolver under this machine's pip config;",
        f"# resolved on CPython {platform.python_version()}, {sys.platform} {platform.machine()}. Do not edit.",
        f"{DIGEST_KEY}{pyproject_digest()}",
    ]
    LOCK.write_text("\n".join(head + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that the lock matches pyproject.toml")
    args = ap.parse_args(argv)
    if args.check:
        if not LOCK.exists() or read_digest() != pyproject_digest():
            print("requirements.lock does not match pyproject.toml: run `make lock`", file=sys.stderr)
            return 1
        return 0
    pins = resolve()
    write(pins)
    print(f"requirements.lock: {len(pins)} packages (torch {pins.get('torch')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
