"""The start of a training run, decided once and in this order: check the settings, walk and scan
the data, resolve the plan, claim the run folder. Training (effnet.training.train) then reads the
`Start` alone.

train.py does this in Hydra's callback, before Hydra writes anything into the run folder, so a
refused start leaves nothing behind; a multirun job, whose values the sweep sets, does it in the
job. Imports no torch, except to read the checkpoint a resume continues.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from effnet import cluster, plan, run_claim, run_names
from effnet.checkpoints.find import locate
from effnet.cli.validate import validate
from effnet.errors import held_warnings

if TYPE_CHECKING:
    from effnet.data.folders import Split
    from effnet.data.scan import DataReport


@dataclass(frozen=True)
class Start:
    """Everything a training run reads: its plan, its split and what the scan found, and its folder."""

    plan: plan.RunPlan
    split: Split
    report: DataReport
    run_dir: Path


def dry_run(cfg: DictConfig) -> plan.RunPlan:
    """The plan train.py would make, without a run folder: the settings checked, the data walked
    and scanned once (its cache then serves the real run)."""
    return dry_run_split(cfg)[0]


def dry_run_split(cfg: DictConfig) -> tuple[plan.RunPlan, Split]:
    """dry_run's plan with the split it was made for (show_batch=true draws from it)."""
    validate(cfg)
    with held_warnings():
        run_plan, split, report = plan.resolve(cfg)
    save_caches(report)
    return run_plan, split


def start(cfg: DictConfig, run_dir: Path | None = None) -> Start:
    """Check, walk, plan and claim, each once (see the module docstring). A resume of a run that
    has finished ends here with one line and exit 0, changing nothing. run_dir: None for Hydra's
    `hydra.run.dir`, read once the settings are checked (its interpolation locates the run a
    ckpt_path names)."""
    validate(cfg)
    run_dir = Path(run_dir if run_dir is not None else cfg.hydra.run.dir).absolute()
    rank_zero = run_names.global_rank() == 0
    if rank_zero:
        run_claim.check_makeable(run_dir)  # one line now, not after the scan and the plan
    # the setup reads the user's files (checkpoint, images, weights): a torch or Pillow warning
    # about one must not precede the line that refuses it
    with held_warnings():
        cluster.resume_if_requeued(cfg, run_dir)  # a requeued SLURM job resumes the run its folder holds
        checkpoint = locate(str(cfg.ckpt_path), "resume", "ckpt_path") if cfg.ckpt_path else None
        surveyed = plan.survey(cfg)
        moved = run_claim.check(cfg, run_dir, surveyed) if rank_zero else None
        resumed, raw = resumed_from(checkpoint) if checkpoint else (None, None)
        run_plan, split, report = plan.resolve(cfg, run_dir, resumed=resumed, surveyed=surveyed, moved=moved)
        if rank_zero and raw is not None:
            run_claim.check_checkpoint(run_plan, str(cfg.ckpt_path), checkpoint, raw)
            done = run_claim.finished(run_dir, resumed.next_epoch, run_plan.recipe.epochs)
            if done:
                print(f"effnet: {done}", file=sys.stderr, flush=True)
                raise SystemExit(0)
        if rank_zero:  # the other ranks write into the folder their rank 0 holds
            run_claim.take(run_dir, resume=checkpoint is not None, moved=moved, new_root=surveyed.root)
            save_caches(report)  # a start refused above writes nothing, not even a cache
    return Start(run_plan, split, report, run_dir)


def resumed_from(checkpoint: Path) -> tuple[plan.Resumed, dict]:
    """The checkpoint a resume continues, read once (mmap: its tensors are not read), without
    unpickling code: one line for a file that is not an effnet checkpoint."""
    from effnet.checkpoints import read
    from effnet.checkpoints.resume import epoch_to_resume

    raw = read.read(checkpoint, "ckpt_path", mmap=True)
    hparams = raw.get("hyper_parameters") or {}
    optimisation = dict(hparams.get("optimisation") or hparams)  # flat in older checkpoints
    epochs = optimisation.get("epochs")
    return plan.Resumed(
        checkpoint=str(checkpoint),
        next_epoch=epoch_to_resume(raw),
        planned_epochs=None if epochs is None else int(epochs),
        backbone_lr_scale=float(optimisation.get("backbone_lr_scale", 1.0)),
    ), raw


def save_caches(report: DataReport) -> None:
    """The scan's and the preprocessing's caches, which serve the next start (a dry run, then the
    run): written only by a start that goes on."""
    from effnet import preprocessing

    report.save_cache()
    preprocessing.save_cache()
