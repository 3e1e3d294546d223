"""DDP processes: how the child ranks of `trainer=ddp` find their job, and how long a rank waits.

Lightning's script launcher starts ranks 1..N-1 of a one-machine DDP run by running the command
line again, with `hydra.run.dir=<run dir>` appended. Under a Hydra multirun that command line is
the whole sweep (`-m lr=1e-3,3e-3`): each child ran the sweep again (an extra
outputs/multirun/<time>/ of empty job folders) and reported a failing job as its own, pointing at
a train.log that only rank 0 writes (Lightning #11300, #15545; Hydra #2070). Here a child runs
*the job*: the job's own overrides, the job's folder as its run dir, as a single run
(`child_command`). One mechanism for single runs and sweep jobs alike.

External launchers (torchrun, SLURM's srun) start every rank themselves, so none of this applies
to them; what does apply is the process-group timeout (`trainer.ddp_timeout_s`): how long a rank
waits in a collective for a rank that stopped answering, e.g. on a node that died or hung.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.strategies.launchers.subprocess_script import (
    _basic_subprocess_cmd,
    _ChildProcessObserver,
    _launch_process_observer,
)
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from omegaconf import DictConfig

log = logging.getLogger("effnet")

# Lightning's names for the popen-launched DDP strategy (the ones effnet builds itself).
DDP_STRATEGIES = {
    "ddp": False,
    "ddp_find_unused_parameters_false": False,
    "ddp_find_unused_parameters_true": True,
}
# Hydra's command-line flags that choose the config; everything else a child needs is an override.
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# Overrides the child gets from child_command itself, not from the job.
OWN_KEYS = ("hydra.run.dir", "hydra.output_subdir", "hydra.mode", "hydra.job.name")


def config_flags(args: Sequence[str]) -> list[str]:
    """-cp/-cn/-cd (in either `--flag value` or `--flag=value` form) from a command line."""
    flags, args = [], list(args)
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name in CONFIG_FLAGS:
            flags += [arg] if "=" in arg or i + 1 == len(args) else [arg, args[i + 1]]
    return flags


def child_command(
    hydra_cfg: DictConfig, argv: Sequence[str], main_module: str | None = None
) -> tuple[list[str], str]:
    """(command, cwd) that runs this Hydra job once more, as one rank of it.

    Not the command line (under -m that is the sweep; under a launcher plugin it is not even
    train.py) but the job: its overrides, and its output folder as the run dir of a single run.
    The child writes no .hydra/ (rank 0 has) and no log file (run_names.log_file).
    """
    cwd = str(hydra_cfg.runtime.cwd)
    if main_module:  # python -m package.module
        command = [sys.executable, "-m", main_module]
    else:
        command = [sys.executable, str(Path(cwd, argv[0]))]
    command += config_flags(argv[1:])
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if o.split("=", 1)[0].lstrip("+~") not in OWN_KEYS]
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',  # quoted: a path may hold = or ,
        "hydra.output_subdir=null",
        "hydra.mode=RUN",  # also when the job's sweep=grid config says MULTIRUN
        f"hydra.job.name={hydra_cfg.job.name}",
    ]
    return command, cwd


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class _SweepJobObserver(_ChildProcessObserver):
    """Lightning's watchdog SIGKILLs the main process when a child rank dies, which in a sweep
    ends every job still to come. Here it ends the other children only; the main process fails
    this job when its next collective finds the peer gone (at once with gloo)."""

    def _terminate_all(self) -> None:
        for proc in self._child_processes:
            proc.send_signal(self._termination_signal)


class JobLauncher(_SubprocessScriptLauncher):
    """Lightning's script launcher, with child ranks that run this job (see the module docstring).

    The environment the children need (MASTER_ADDR, ..., LOCAL_RANK) goes to the children only:
    Lightning writes it into this process's os.environ, where LOCAL_RANK would make the next job
    of a sweep believe its ranks were started externally, and wait for ones that never come.
    """

    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            if in_sweep():
                _SweepJobObserver(child_processes=self.procs, main_pid=os.getpid()).start()
            else:
                _launch_process_observer(self.procs)
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        env = self.cluster_environment
        shared = {
            **os.environ,
            "MASTER_ADDR": env.main_address,
            "MASTER_PORT": str(env.main_port),
            "NODE_RANK": str(env.node_rank()),
            "WORLD_SIZE": str(self.num_processes * self.num_nodes),
        }
        if HydraConfig.initialized():
            import __main__  # as Lightning does: python train.py, or python -m module

            spec = getattr(__main__, "__spec__", None)
            command, cwd = child_command(HydraConfig.get(), sys.argv, spec.name if spec else None)
        else:  # run() called from Python, not through train.py
            command, cwd = list(_basic_subprocess_cmd()), None
        self.procs = [
            subprocess.Popen(command, env={**shared, "LOCAL_RANK": str(rank)}, cwd=cwd)
            for rank in range(1, self.num_processes)
        ]


class JobDDPStrategy(DDPStrategy):
    """DDPStrategy whose children run this job (JobLauncher), and which closes its process group
    when the run ends: Lightning leaves it open, so the next job of a sweep in this process would
    reuse one whose other ranks have exited."""

    def _configure_launcher(self) -> None:
        self._launcher = JobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def teardown(self) -> None:
        super().teardown()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def strategy(name: str, world_size: int, timeout_s: float) -> str | DDPStrategy:
    """The Trainer's strategy: effnet's DDP with the process-group timeout for the DDP names (and
    for `auto` with several processes, where Lightning would pick DDP), else the name as given."""
    if name == "auto" and world_size > 1:
        name = "ddp"
    if name not in DDP_STRATEGIES:
        return name
    return JobDDPStrategy(find_unused_parameters=DDP_STRATEGIES[name], timeout=timedelta(seconds=timeout_s))
