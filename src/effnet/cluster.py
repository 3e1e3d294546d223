"""External launchers (SLURM, torchrun): the shape they gave the job, and SLURM's requeue.

Lightning refuses to start when the job's shape and the Trainer's disagree: under SLURM
`trainer.devices` must equal `--ntasks-per-node` and `trainer.num_nodes` must equal `--nodes`;
under torchrun devices x nodes must equal the world size. It finds out after the data scan, with
a traceback. effnet checks the same before anything runs, and for `hydra/launcher=slurm` before
anything is submitted (`check_launcher`), in one line.

The signal story. SLURM warns a job before its time limit with the signal named by `--signal`.
effnet takes SIGUSR1 (effnet.training.interrupts): every rank finishes its step, rank 0 writes
checkpoints/interrupted.ckpt, and then, in a batch job, rank 0 runs `scontrol requeue` (`requeue`).
SLURM starts the job again with the same job id and SLURM_RESTART_COUNT=1, in the same run folder
(a sweep job's folder, or slurm-<job id>), and the run resumes from its last.ckpt by itself
(`resume_if_requeued`). One signal for every way of launching: `sbatch --signal=USR1@90` + srun,
torchrun inside SLURM, and hydra/launcher=slurm, whose preset asks SLURM for USR1 instead of
submitit's USR2. submitit's USR2 handler would requeue only with max_num_timeout > 0 (the
launcher's default is 0), only on rank 0, and by exiting in the middle of a training step.
Imports no torch.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from effnet import recipes
from effnet.checkpoints import find
from effnet.errors import UserError

log = logging.getLogger("effnet")

# hydra-submitit-launcher's class behind hydra/launcher=submitit_slurm and effnet's slurm preset
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
# Lightning's SLURMEnvironment ignores a job with one of these names: a shell inside an allocation
INTERACTIVE_NAMES = ("bash", "interactive")
# effnet's cap on loader workers per training process: what data.num_workers=auto gives with cores to spare
MAX_LOADER_WORKERS = recipes.loader_workers(cores=1 << 20, devices_per_node=1)


def in_slurm_step(environ: Mapping[str, str] = os.environ) -> bool:
    """Started by srun (every process of a SLURM job step has SLURM_NTASKS), and not a shell in
    an interactive allocation: the processes Lightning's SLURMEnvironment takes over."""
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in INTERACTIVE_NAMES


def in_batch_job(environ: Mapping[str, str] = os.environ) -> bool:
    """Inside a SLURM job that SLURM can requeue: not a shell in an interactive allocation."""
    return bool(environ.get("SLURM_JOB_ID")) and environ.get("SLURM_JOB_NAME") not in INTERACTIVE_NAMES


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    return "TORCHELASTIC_RUN_ID" in environ


def restarted(environ: Mapping[str, str] = os.environ) -> bool:
    """SLURM started this job again after a requeue (the first run has no SLURM_RESTART_COUNT)."""
    count = environ.get("SLURM_RESTART_COUNT", "")
    return count.isdigit() and int(count) > 0


def job_label(environ: Mapping[str, str] = os.environ) -> str:
    """The job as squeue shows it: <array job>_<task> for a task of an array (a sweep), else its id."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else environ.get("SLURM_JOB_ID", "?")


def resume_if_requeued(cfg: DictConfig, run_dir: Path | str) -> None:
    """SLURM started this job again (effnet requeued it on the time-limit warning) and its run
    folder holds its run: continue that run, as `ckpt_path=<run folder>` would, so the run
    folder's checks for a resume apply (effnet.run_claim: the same run, the same data). Every rank
    decides alike: none writes a checkpoint before all have joined the process group."""
    if cfg.get("ckpt_path") is not None or not restarted():
        return
    if find.in_folder(Path(run_dir) / find.CHECKPOINTS, "resume") is None:
        return  # stopped before its first checkpoint: a fresh start in the same folder
    with read_write(cfg):
        cfg.ckpt_path = str(run_dir)
    log.info("SLURM restarted this job (requeued): resuming the run in %s", run_dir)


def requeue(environ: Mapping[str, str] = os.environ) -> str | None:
    """`scontrol requeue` this batch job; None when it worked, else why not. An array task has a
    job id of its own, so SLURM_JOB_ID names it."""
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return "not a SLURM job"
    try:
        done = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scontrol requeue {job}: {exc}"
    if done.returncode != 0:
        return f"scontrol requeue {job}: {' '.join((done.stderr or done.stdout).split()) or done.returncode}"
    return None


def device_count(devices) -> int | None:
    """trainer.devices as a number of processes per node; None for auto (decided on the node)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices > 0 else None
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices not in ("auto", "-1"):
        return len([d for d in devices.split(",") if d.strip()])
    return None


def check_job_shape(devices, num_nodes: int, environ: Mapping[str, str] = os.environ) -> None:
    """The job's shape as SLURM or torchrun started it against trainer.devices and num_nodes:
    the checks Lightning's cluster environments make, as one line and before any work."""
    per_node = device_count(devices)
    if under_torchrun(environ):
        world = environ.get("WORLD_SIZE", "")
        local = environ.get("LOCAL_WORLD_SIZE", "")
        if per_node is not None and local.isdigit() and int(local) != per_node:
            raise UserError(
                f"trainer.devices={devices} but torchrun starts {local} process(es) per node "
                f"(--nproc-per-node={local}); set trainer.devices={local}"
            )
        if per_node is not None and world.isdigit() and per_node * num_nodes != int(world):
            raise UserError(
                f"trainer.devices={devices} x trainer.num_nodes={num_nodes} != torchrun's world size "
                f"{world} (--nnodes x --nproc-per-node); set trainer.num_nodes={int(world) // per_node}"
            )
        return
    if not in_slurm_step(environ):
        return
    # SLURM_NTASKS_PER_NODE is only set when --ntasks-per-node was given; SLURM_TASKS_PER_NODE
    # always is, as "2" or "2(x3)" (several nodes alike) or "2,1" (nodes that differ)
    tasks = (
        environ.get("SLURM_NTASKS_PER_NODE") or re.split(r"[(,]", environ.get("SLURM_TASKS_PER_NODE", ""))[0]
    )
    if per_node is not None and tasks.isdigit() and int(tasks) != per_node:
        raise UserError(
            f"trainer.devices={devices} but the SLURM job runs {tasks} task(s) per node "
            f"(--ntasks-per-node={tasks}); Lightning needs one task per device: set trainer.devices={tasks}"
        )
    nodes = environ.get("SLURM_NNODES", "")
    if nodes.isdigit() and int(nodes) != num_nodes:
        raise UserError(
            f"trainer.num_nodes={num_nodes} but the SLURM job has {nodes} node(s) (--nodes={nodes}); "
            f"set trainer.num_nodes={nodes}"
        )


def check_launcher(config: DictConfig, swept: set[str]) -> None:
    """hydra/launcher=slurm (or submitit_slurm): the job shape SLURM will be asked for must be the
    one Lightning accepts. Run before the sweep submits anything; `swept` are the keys it varies."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    if launcher is None or launcher.get("_target_") != SLURM_LAUNCHER:
        return
    for key in ("trainer.devices", "trainer.num_nodes", "trainer.accelerator"):
        if key in swept or key.split(".")[0] in swept:
            raise UserError(
                f"{key} is swept, but hydra/launcher=slurm submits the sweep as one SLURM array job, "
                "with one shape for every job; submit one sweep per value"
            )
    trainer = config.trainer
    per_node = device_count(trainer.devices)
    if per_node is None:
        raise UserError(
            f"trainer.devices={trainer.devices}: hydra/launcher=slurm needs a number of devices per node "
            "(SLURM starts one task per device before the node is known), e.g. trainer.devices=1"
        )
    tasks, nodes = launcher.tasks_per_node, launcher.nodes
    if tasks != per_node:
        raise UserError(
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={trainer.devices}: Lightning runs one "
            f"SLURM task per device and refuses any other count; set trainer.devices={tasks}, or leave "
            "tasks_per_node to hydra/launcher=slurm, which sets it from trainer.devices"
        )
    if nodes != trainer.num_nodes:
        raise UserError(
            f"hydra.launcher.nodes={nodes} but trainer.num_nodes={trainer.num_nodes}: Lightning refuses a "
            f"different count; set trainer.num_nodes={nodes}, or leave nodes to hydra/launcher=slurm"
        )
    gpus = launcher.get("gpus_per_node")
    if str(trainer.accelerator) in ("gpu", "cuda") and isinstance(gpus, int) and gpus < per_node:
        raise UserError(
            f"hydra.launcher.gpus_per_node={gpus} but trainer.devices={trainer.devices} GPUs per node; "
            f"set hydra.launcher.gpus_per_node={per_node}"
        )


# Resolvers behind conf/hydra/launcher/slurm.yaml


def gpus_per_node(accelerator: str, devices) -> int | None:
    """One GPU per device, unless the run is on the CPU (`auto` on a cluster means the GPUs)."""
    if str(accelerator) == "cpu":
        return None
    return device_count(devices)


def cpus_per_task(num_workers) -> int:
    """The training process and its loader workers (auto: effnet's cap of 8 per process)."""
    workers = MAX_LOADER_WORKERS if num_workers == "auto" else int(num_workers)
    return workers + 1
