"""The SLURM test cluster runs a submitit job and returns its result."""

from __future__ import annotations

import os
import time


def where_am_i(x: int) -> tuple[int, str | None, str | None]:
    return 2 * x, os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_PROCID")


def test_submitit_job_runs_on_the_cluster(slurm_cluster, tmp_path):
    start = time.monotonic()
    job = slurm_cluster.executor(tmp_path).submit(where_am_i, 21)
    assert job.result() == (42, job.job_id, "0")
    assert (tmp_path / job.job_id / f"{job.job_id}_0_result.pkl").exists()
    print(
        f"{slurm_cluster.version}: bring-up {slurm_cluster.bring_up_s} s, job {time.monotonic() - start:.1f} s"
    )
