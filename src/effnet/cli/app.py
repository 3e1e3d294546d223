"""Entry-point glue between Hydra and effnet; imports no torch, so --help and errors are instant.

Config and data problems end as one line on stderr with exit status 2. HYDRA_FULL_ERROR=1
brings back Hydra's full traceback for debugging.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from effnet import cluster, run_claim, run_names, sweep_jobs, sweeper
from effnet.cli import argv
from effnet.cli.schema import check_surface, options_resolver
from effnet.cli.validate import validate, validate_command, validate_launcher
from effnet.errors import (
    RankFailed,
    UserError,
    exit_for,
    exit_with,
    keep_full_error_choice,
    one_line,
)

log = logging.getLogger("effnet")


class ValidateBeforeRun(Callback):
    """Hydra calls this after composing the config and before making the run folder.

    Hydra turns exceptions from callbacks into warnings and carries on, so a bad value leaves
    through SystemExit: nothing is written. `command` names the script (train, eval, predict,
    export, bench) whose rules apply; a key the command line adds that nothing reads is refused
    first (effnet.cli.schema). A dry run (train.py dry_run=true) ends here too, after printing
    the plan: no run folder, no log file.
    """

    def __init__(self, command: str = "train") -> None:
        self.command = command

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_surface(config, self.command)  # a key nothing reads, added with + or ++
            if self.command != "train":
                validate_command(self.command, config)
                run_dir = Path(config.hydra.run.dir).absolute()  # after: it may locate ckpt's run
                VALIDATED.add(run_dir)
                run_claim.make(run_dir)
                return
            from effnet import start  # the plan: timm's preprocessing, the data scan

            if config.get("dry_run") and config.get("show_batch"):
                dry_run(*start.dry_run_split(config))
            if config.get("dry_run"):
                dry_run(start.dry_run(config))
            begun = start.start(config)
            STARTED[begun.run_dir] = begun
        except Exception as exc:
            exit_for(exc, bugs_exit=True)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._validate_or_exit(config)
        if self.command == "train":
            self._validate_or_exit(config, validate_launcher)
        if self.command == "train" and config.get("dry_run"):
            exit_with("dry_run=true shows one run's plan: drop -m (or run it once per value you sweep)")
        if self.command == "train" and config.get("lr") == "find":
            exit_with("lr=find runs the finder once, on one run's setup: drop -m (or sweep lr over numbers)")

    def _validate_or_exit(
        self, config: DictConfig, check: Callable[[DictConfig], None] | None = None
    ) -> None:
        try:
            if check is not None:
                check(config)
                return
            check_surface(config, self.command)  # a key nothing reads, added with + or ++
            if self.command == "train":
                validate(config)
            else:
                validate_command(self.command, config)
        except Exception as exc:
            exit_for(exc, bugs_exit=True)


# The work the callback did for a single run, which its job then reads instead of doing again:
# a train.py start (effnet.start), or the run folders of other commands whose values it checked.
STARTED: dict[Path, object] = {}
VALIDATED: set[Path] = set()


def dry_run(plan, split=None) -> NoReturn:
    """Print the run plan (data, recipe and why, batch plan, precision, preprocessing, the command
    to start it) and exit 0, before Hydra makes a run folder. With the `split` (show_batch=true),
    also draw the plan's first augmented training batch (the heavy imports start there)."""
    from effnet.plan import print_plan

    print_plan(plan)
    if split is not None:
        from effnet.training.preview import show_batch

        show_batch(plan, split)
    raise SystemExit(0)


def register_resolvers() -> None:
    for name, fn in (
        ("effnet_run_dir", run_names.run_dir_for),
        ("effnet_log_file", run_names.log_file),
        ("effnet_rank_zero", run_names.rank_zero_only),
        ("effnet_slurm_gpus", cluster.gpus_per_node),
        ("effnet_slurm_cpus", cluster.cpus_per_task),
        ("effnet_options", options_resolver),  # --help's list of keys (conf/hydra/help/*.yaml)
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


class SweepJobFailed(UserError):
    """A multirun job failed; raised to Hydra, which records it and (basic sweeper) runs the rest."""


def job_failed(cfg: DictConfig, hydra_cfg: DictConfig, exc: Exception) -> NoReturn:
    """Log why a sweep job failed (with the traceback when it is a bug), leave error.txt in its
    folder for the sweep report, then stop the sweep (sweep.fail_fast) or let Hydra go on."""
    message = one_line(exc)
    bug = message is None
    message = message or f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    job = f"job {hydra_cfg.job.num} ({sweep_jobs.job_name(hydra_cfg)})"
    out = Path(hydra_cfg.runtime.output_dir)
    log.error("%s failed: %s", job, message, exc_info=bug)
    if run_names.global_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(message + "\n")
    if cfg.sweep.fail_fast:
        exit_with(f"{job} failed: {message}; stopped the sweep (sweep.fail_fast=true)")
    raise SweepJobFailed(f"{job} failed: {message}; see {out}/train.log") from exc


def job_pruned(hydra_cfg: DictConfig, why: str) -> NoReturn:
    """A sweep trial the pruner stopped: not a failure. Say so in the log and in pruned.txt in its
    folder (the sweep report lists it as pruned), and raise optuna.TrialPruned, which effnet's
    sweeper records as a pruned trial and goes on."""
    import optuna

    job = f"job {hydra_cfg.job.num} ({sweep_jobs.job_name(hydra_cfg)})"
    out = Path(hydra_cfg.runtime.output_dir)
    log.info("%s pruned %s", job, why)
    if run_names.global_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pruned.txt").write_text(f"pruned {why}\n")
    raise optuna.TrialPruned(f"{job} pruned {why}")


@functools.cache
def quick_exit() -> None:
    """At exit, leave the objects alive now out of the garbage collections Python runs while it
    tears its modules down: with torch, Lightning and timm loaded those walk millions of objects
    for seconds (4.2 s -> 0.6 s on a loaded 2-core machine) and free nothing a process that is
    ending needs. atexit handlers (logging, W&B, loader workers) still run, and open files are
    closed when the modules are cleared. Registered once per process, by the entry scripts and by
    a job a launcher started (a SLURM job runs train_task, not main)."""
    atexit.register(gc.freeze)


def train_task(cfg: DictConfig) -> float | None:
    """One job; returns the best value of train.monitor, which sweepers such as Optuna's optimise
    (in the direction train.monitor_mode gives: effnet.sweeper.objective_direction)."""
    quick_exit()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir).absolute()
    try:
        begun = STARTED.pop(run_dir, None)
        if begun is None:  # a multirun job: the sweep set its values after on_multirun_start
            from effnet import start

            check_surface(cfg, "train", hydra_cfg)  # its own options, against all swept ones
            begun = start.start(cfg, run_dir)
        if begun.plan.lr_find is not None:  # lr=find: the finder instead of training (not in a sweep)
            from effnet.training.lr_find import find

            find(begun)
            return None
        from effnet.training.train import train  # the heavy imports start here

        summary = train(begun, trial=sweeper.job_trial(hydra_cfg))  # a trial of effnet's Optuna sweeper
        best = summary["best_monitor_value"]
        if best is None and multirun:
            raise UserError(
                f"no {summary['monitor']} was recorded (validation never ran), so this job cannot be ranked"
            )
    except Exception as exc:
        if multirun:
            job_failed(cfg, hydra_cfg, exc)
        if isinstance(exc, UserError):
            run_claim.discard(run_dir)  # a fresh run that stopped before its first checkpoint leaves none
        if isinstance(exc, RankFailed):
            exit_with(str(exc), status=1)  # another rank's error: not a user mistake
        exit_for(exc)  # one line, not Hydra's "Error executing job" preamble
    if multirun and summary.get("pruned"):
        job_pruned(hydra_cfg, summary["pruned"])
    return best


def main(config_dir: Path, config_name: str, task=train_task) -> None:
    """Run a Hydra app, turning the errors a user can fix into one line."""
    quick_exit()
    keep_full_error_choice()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    # A log line that cannot be written (train.log on a full disk) is lost, not a "--- Logging
    # error ---" traceback on stderr before the one line that says the disk is full.
    logging.raiseExceptions = False
    os.environ.setdefault(run_names.SCRIPT_ENV, sys.argv[0])  # inherited by the jobs a launcher submits
    register_resolvers()
    app = hydra.main(config_path=str(config_dir), config_name=config_name, version_base="1.3")(task)
    try:
        sys.argv[1:] = argv.prepare(sys.argv[1:], sys.argv[0])  # `~` in paths, unknown flags
        app()
    except KeyboardInterrupt:  # Ctrl-C during the start (a long data scan): training installs its own handler
        exit_with("interrupted (Ctrl-C) before training started: no checkpoint was written", status=130)
    except Exception as exc:
        exit_for(exc)
