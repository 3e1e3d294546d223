"""A real single-node SLURM cluster for tests (the `slurm_cluster` fixture in conftest.py uses it).

    def test_something(slurm_cluster, tmp_path):
        job = slurm_cluster.executor(tmp_path).submit(fn, 1)
        assert job.result() == ...

The fixture runs scripts/slurm-cluster.sh, which installs Debian's slurm-wlm, munge, slurmdbd and
MariaDB with apt on first use (about 30 s) and starts the daemons; when the cluster is already up it
returns in a fraction of a second. The cluster is left running after the session (stop it with
`scripts/slurm-cluster.sh stop`), so the next session starts warm.

It needs root and apt (CI has both). Without them the fixture fails, with the reason: a test that
needs a cluster must not pass by being skipped. EFFNET_SKIP_SLURM=1 skips these tests on purpose,
e.g. on a developer machine without root.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-cluster.sh"
SKIP_ENV = "EFFNET_SKIP_SLURM"
BRING_UP_TIMEOUT_S = 900  # a cold start downloads ~30 MB of packages


@dataclass(frozen=True)
class SlurmCluster:
    node: str
    cpus: int
    partition: str
    version: str
    bring_up_s: float

    def executor(self, folder: Path | str, **params):
        """A submitit executor for this cluster: jobs log to `folder`, run with this checkout's
        code on sys.path (as pytest has it), 1 CPU and 5 minutes unless `params` say otherwise."""
        import submitit

        params = {"timeout_min": 5, "cpus_per_task": 1, "slurm_partition": self.partition, **params}
        path = f"{ROOT}:{ROOT / 'src'}"
        params.setdefault("slurm_setup", [f"export PYTHONPATH={path}${{PYTHONPATH:+:$PYTHONPATH}}"])
        ex = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="slurm")
        ex.update_parameters(**params)
        return ex


def _preconditions() -> None:
    why = f"set {SKIP_ENV}=1 to skip the SLURM tests on purpose"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.fail(f"the SLURM tests need root: {SCRIPT.name} installs packages and starts daemons ({why})")
    if not shutil.which("sinfo") and not shutil.which("apt-get"):
        pytest.fail(
            f"the SLURM tests need apt-get to install slurm-wlm (Debian 12), and it is not here ({why})"
        )
    if importlib.util.find_spec("submitit") is None:
        pytest.fail("the SLURM tests need submitit: pip install 'effnet[slurm]'")


def _sinfo(fmt: str) -> str:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", fmt], capture_output=True, text=True, timeout=30, check=True
    )
    return out.stdout.split("\n")[0].strip()


def bring_up() -> SlurmCluster:
    """Start the cluster (or find it up) and describe it; fails the test with the reason if it cannot."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: SLURM cluster tests skipped")
    _preconditions()
    start = time.monotonic()
    # Output to a file, not a pipe: the daemons outlive the script.
    with tempfile.TemporaryFile("w+") as log:
        try:
            rc = subprocess.run(
                ["bash", str(SCRIPT), "start"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BRING_UP_TIMEOUT_S,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = f"no exit after {BRING_UP_TIMEOUT_S} s"
        log.seek(0)
        output = log.read()
    if rc != 0:
        tail = "\n".join(output.splitlines()[-40:])
        pytest.fail(f"{SCRIPT.relative_to(ROOT)} start failed ({rc}):\n{tail}", pytrace=False)
    node, cpus, partition = _sinfo("%N %c %P").split()
    version = subprocess.run(
        ["sinfo", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return SlurmCluster(
        node=node,
        cpus=int(cpus),
        partition=partition.rstrip("*"),
        version=version,
        bring_up_s=round(time.monotonic() - start, 1),
    )
