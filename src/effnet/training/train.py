"""One training run: the objects the plan names, then fit, then summary.json.

Every value comes from effnet.plan.RunPlan, resolved once by effnet.start; this module only
builds the module, the loaders, the callbacks and the Trainer from it, and records what happened.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import logging
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import OmegaConf

from effnet import diskspace, run_claim, run_names
from effnet import plan as run_plan
from effnet.checkpoints import find, resume, write
from effnet.data import folders, pixels, scan
from effnet.data.balance import sample_weights
from effnet.data.datamodule import ImageDataModule
from effnet.errors import UserError, held_warnings
from effnet.files import write_json
from effnet.start import Start
from effnet.sweeper import TrialRef
from effnet.training import interrupts, launch, ranks
from effnet.training.callbacks import (
    RESULTS_FILE,
    BatchPreview,
    BestEpoch,
    Dashboards,
    EarlyStop,
    FreezeBackbone,
    LogEpochs,
    Throughput,
    progress_bar,
)
from effnet.training.divergence import StopOnDivergence
from effnet.training.loggers import build_loggers, finishing
from effnet.training.module import ClassifierModule
from effnet.training.pruning import ReportToTrial

log = logging.getLogger("effnet")


def quiet_libraries() -> None:
    """Lightning logs through its own handler and the root one (Hydra's console and train.log):
    keep the root one, so each line shows once and lands in the log file. Silence warnings that
    are about effnet's deliberate choices, not the user's run."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    for message in (
        ".*overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*does not have many workers which may be a bottleneck.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def train(begun: Start, trial: TrialRef | None = None) -> dict:
    """Train the run `begun` (effnet.start) sets up; returns the summary that is also written to
    run_dir/summary.json. A signal ends it with a checkpoint and the command that resumes it
    (effnet.training.interrupts). trial: the Optuna trial of a sweep job, to report each epoch to
    and be pruned by."""
    run_dir = begun.run_dir
    stop = interrupts.Interrupts(run_dir / find.CHECKPOINTS / find.INTERRUPTED)
    # the loaders' guard, at the scan's limit
    with stop.installed(), pixels.limited(begun.plan.records.max_image_pixels):
        try:
            return build_and_fit(begun.plan, begun.split, begun.report, run_dir, stop, trial)
        except Exception as exc:
            full = diskspace.NoSpace.of(exc)
            if full is None or full.kept is not None:
                raise
            # a checkpoint, a figure, the metrics, the data cache: the disk is full
            raise full.keeping(kept_checkpoint(run_dir)) from exc
        finally:
            stop.requeue_if_asked()  # last: SLURM ends the job's processes once it is requeued


def prepare_run_dir(run_dir: Path, plan: run_plan.RunPlan, split: folders.Split, report) -> None:
    """Rank 0, before the other ranks exist: clear what a killed attempt left, write the split,
    the data report and the resolved plan."""
    ranks.clear(run_dir)
    for stale in write.remove_stale_temporaries(run_dir / find.CHECKPOINTS):
        log.info("removed %s: a checkpoint write that was cut short (the previous file is intact)", stale)
    if plan.resumed is None or folders.load_split(run_dir) is None:  # a resume keeps the run's own
        folders.save_split(split, run_dir)
    run_claim.record(run_dir, run_claim.identity_of(plan))
    write_json(run_dir / scan.REPORT_FILE, report.record())
    scan.log_report(report, plan.records.on_bad_image)
    for warning in plan.warnings:  # what the plan adjusted (a shrunk batch, a tier): the log says it too
        if warning not in report.warnings:  # the data's own were logged with the scan
            log.warning(warning)
    (run_dir / "resolved.yaml").write_text(
        OmegaConf.to_yaml({"resolved": plan.summary(), "config": dict(plan.records.config)})
    )


def data_module(plan: run_plan.RunPlan, split: folders.Split) -> ImageDataModule:
    loading = plan.loading
    return ImageDataModule(
        split,
        plan.preprocessing,
        loading.augmentation,
        micro_batch=plan.batches.micro_batch,
        num_workers=loading.workers,
        pin_memory=loading.pin_memory,
        seed=plan.seed,
        sample_weights=sample_weights(split.train) if loading.balance == "weighted_sampler" else None,
        cache=loading.cache,
        worker_nice=loading.worker_nice,
    )


def note_resume(resumed: run_plan.Resumed, epochs: int, run_dir: Path) -> None:
    """Say where the run continues, warn when the schedule differs, and drop the metrics.csv and
    results.csv rows of the epochs about to be replayed so none is listed twice."""
    log.info("resuming from %s at the start of epoch %d", resumed.checkpoint, resumed.next_epoch + 1)
    planned = resumed.planned_epochs
    if planned is not None and planned != epochs:  # timm restores its schedule's length
        log.warning(
            "epochs=%d, but the checkpoint's learning-rate schedule was built for %d epochs and is "
            "restored as it was (after epoch %d the lr stays at scheduler.min_lr); start a new run to "
            "train on a different schedule",
            epochs,
            planned,
            planned,
        )
    resume.trim_metrics(run_dir / "metrics.csv", resumed.next_epoch)
    # results.csv counts epochs from 1; its rows are rewritten from the checkpoint's at the next
    # epoch's end, and until then hold none of the epochs about to be replayed either
    resume.trim_metrics(run_dir / RESULTS_FILE, resumed.next_epoch + 1)


def check_trainer_keys(trainer_args: Mapping[str, Any]) -> None:
    """The `trainer:` keys go to lightning.Trainer as they are. effnet.cli.schema let them through
    by its own list of Trainer arguments (importing Lightning would cost every dry run seconds);
    one the installed Lightning does not take is one line here, not a TypeError."""
    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer_args:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see lightning.Trainer's arguments"
            raise UserError(f"trainer.{key}: not an argument of lightning.Trainer ({hint})")


def build_and_fit(
    plan: run_plan.RunPlan,
    split: folders.Split,
    report,
    run_dir: Path,
    stop: interrupts.Interrupts,
    trial: TrialRef | None = None,
) -> dict:
    """The plan's objects (the module, the loaders, the callbacks, the Trainer), then fit, then
    summary.json. Reads the plan alone: every value was decided at the start."""
    started = time.perf_counter()
    quiet_libraries()
    check_trainer_keys(plan.trainer)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(plan.seed, workers=True, verbose=False)
    with held_warnings():  # a torch warning about the user's weights must not precede its one line
        if run_names.global_rank() == 0:
            prepare_run_dir(run_dir, plan, split, report)
        torch.set_num_threads(plan.loading.threads)
        module = ClassifierModule(**plan.module_args(), init=plan.init)
    setup = {**plan.summary(), "parameters": sum(p.numel() for p in module.net.parameters())}
    log.info(
        "recipe: %s", ", ".join(f"{k}={v}" for k, v in setup.items() if k not in ("classes", "preprocessing"))
    )
    datamodule = data_module(plan, split)
    watched = Watched.of(plan, split, run_dir, trial)
    loggers = build_loggers(plan.records.loggers, plan.records.config, run_dir, setup)
    trainer = L.Trainer(
        **{
            **plan.trainer_args(),
            "strategy": launch.strategy(plan.strategy, plan.world_size, plan.ddp_timeout_s),
        },
        default_root_dir=str(run_dir),
        callbacks=watched.callbacks(plan, run_dir, datamodule, stop),
        logger=loggers or False,
        plugins=[write.AtomicCheckpointIO()],
    )
    checkpoint = Path(plan.resumed.checkpoint) if plan.resumed else None
    if trainer.is_global_zero and plan.resumed is not None:
        note_resume(plan.resumed, plan.recipe.epochs, run_dir)
    # finishing: a failed or interrupted run's W&B run is closed too, or a sweep's next job would reuse it
    with finishing(loggers):
        fit(trainer, module, datamodule, checkpoint, run_dir, stop, plan.ddp_timeout_s)
    summary = {
        **setup,
        **watched.summary(trainer.current_epoch),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "run_dir": str(run_dir),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", summary)
        print_summary(summary)
    return summary


@dataclasses.dataclass
class Watched:
    """The callbacks whose findings the summary reports: the best checkpoint and epoch (both by
    train.monitor), early stopping, the throughput, the dashboards and a sweep trial's pruning."""

    best: ModelCheckpoint
    best_epoch: BestEpoch
    throughput: Throughput
    dashboards: Dashboards
    pruning: ReportToTrial | None
    ckpt_dir: Path
    early_stop: EarlyStop | None = None

    @classmethod
    def of(
        cls, plan: run_plan.RunPlan, split: folders.Split, run_dir: Path, trial: TrialRef | None
    ) -> Watched:
        ckpt_dir = run_dir / find.CHECKPOINTS
        records = plan.records
        best_epoch = BestEpoch(records.monitor, records.monitor_mode)
        patience = records.early_stopping_patience
        return cls(
            best=ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=plan.records.monitor,
                mode=plan.records.monitor_mode,
                save_top_k=1,
                auto_insert_metric_name=False,
            ),
            best_epoch=best_epoch,
            throughput=Throughput(),
            dashboards=Dashboards(run_dir, split.classes, best_epoch, samples=plan.records.samples),
            pruning=ReportToTrial(trial, records.monitor) if trial is not None else None,
            ckpt_dir=ckpt_dir,
            early_stop=EarlyStop(
                records.monitor, records.monitor_mode, patience, records.early_stopping_min_delta
            )
            if patience is not None
            else None,
        )

    def callbacks(self, plan: run_plan.RunPlan, run_dir: Path, datamodule, stop) -> list:
        """Every callback of the run, in the order they must run."""
        last = self.ckpt_dir / find.LAST
        callbacks = [
            StopOnDivergence(plan.records.divergence_patience, last),  # first: before anything records
            self.best,
            # Lightning's save_last only writes when `best` improved; resume needs every epoch's state.
            ModelCheckpoint(
                dirpath=self.ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False
            ),
            self.throughput,
            self.best_epoch,
            progress_bar(),
            LogEpochs(),
            LearningRateMonitor("step"),
            resume.ResumeState(last, datamodule.train_sampler),
            stop,
            ranks.RecordFailure(run_dir),
            self.dashboards,
        ]
        if plan.freeze_epochs:
            callbacks.append(FreezeBackbone(plan.freeze_epochs))
        if plan.records.train_batch:
            callbacks.append(batch_preview(plan, run_dir))
        # Lightning runs the stopping callbacks after the others at each epoch's end
        callbacks += [self.early_stop] if self.early_stop is not None else []
        return callbacks + ([self.pruning] if self.pruning is not None else [])

    def summary(self, epochs_completed: int) -> dict:
        """What the callbacks found: summary.json's second half. best_val_acc and best_val_f1 are
        those of the best epoch by train.monitor (rank 0 keeps the history they come from)."""
        epoch, best_value = self.best_epoch.best
        score = self.best.best_model_score
        pruned = self.pruning.pruned if self.pruning is not None else None
        best_value = best_value if score is None else float(score)  # every rank has best.ckpt's
        dashboards = self.dashboards.summary
        if dashboards["best_val_acc"] is None and self.best.monitor == "val/acc":
            dashboards["best_val_acc"] = best_value
        stopped = self.early_stop.stopped if self.early_stop is not None else None
        return {
            "monitor": self.best.monitor,
            "monitor_mode": self.best.mode,
            "best_monitor_value": best_value,
            "best_epoch": None if epoch is None else epoch + 1,
            **dashboards,
            "best_checkpoint": self.best.best_model_path,
            "last_checkpoint": str(self.ckpt_dir / find.LAST),
            "epochs_completed": epochs_completed,
            "train_images_per_sec": round(self.throughput.typical, 2),
            "data_wait_fraction": self.throughput.typical_wait,
            **({"pruned": pruned} if pruned else {}),
            **({"stopped_early": stopped} if stopped else {}),
        }


def batch_preview(plan: run_plan.RunPlan, run_dir: Path) -> BatchPreview:
    """train_batches.png: the first augmented batch of a fresh run (effnet.training.callbacks)."""
    reg = plan.regularisation
    return BatchPreview(
        run_dir, list(plan.network.classes), plan.records.train_batch, mixing=reg.mixup > 0 or reg.cutmix > 0
    )


def fit(
    trainer: L.Trainer, module, datamodule, checkpoint: Path | None, run_dir: Path, stop, timeout_s: float
) -> None:
    """trainer.fit, with the two ways a run ends early: another rank failed first (one line naming
    it), or a signal asked it to stop (a checkpoint, then the command that resumes it)."""
    try:
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=str(checkpoint) if checkpoint else None,
            weights_only=True,  # resume never unpickles code, whoever wrote the file
        )
    except Exception as exc:
        ranks.raise_if_not_first(run_dir, trainer.global_rank, trainer.world_size, exc, timeout_s)
        raise
    except SystemExit:  # SIGTERMException, or Lightning's exit after a second Ctrl-C
        if stop.received is None:
            raise
        resume_from = find.in_folder(run_dir / find.CHECKPOINTS, "resume")
        interrupts.exit_interrupted(
            stop, trainer, run_dir, resume.resume_epoch(resume_from) if resume_from else 0
        )


def kept_checkpoint(run_dir: Path) -> str:
    """What a run that failed to write keeps, and how to go on once there is room."""
    last = find.in_folder(run_dir / find.CHECKPOINTS, "resume")
    if last is None:
        return "no checkpoint had been written yet: free some space and start the run again"
    return (
        f"the last good checkpoint is kept ({last}, resuming at the start of epoch "
        f"{resume.resume_epoch(last) + 1}): free some space, then resume with: {interrupts.resume_command(run_dir)}"
    )


def print_summary(summary: dict) -> None:
    """The run's summary through the "effnet" logger: on the console and in train.log alike."""
    log.info("%s", summary_text(summary, shutil.get_terminal_size((100, 24)).columns))


def summary_text(summary: dict, width: int) -> str:
    """The summary as a table `width` columns wide, then the paths a person copies, each whole on
    a line of its own: a table cell would fold or cut them on a narrow console or in a pipe."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="effnet run", show_header=False, title_justify="left")
    table.add_column()
    table.add_column(overflow="fold")  # a long model name breaks, is not cut to "…"
    monitor, value, epoch = summary["monitor"], summary["best_monitor_value"], summary["best_epoch"]
    acc = summary["best_val_acc"]
    rows = [
        (
            f"best {monitor}",
            "n/a" if value is None else f"{value:.4f} (epoch {epoch}, {summary['monitor_mode']})",
        )
    ]
    if monitor != "val/acc":
        rows.append(("val top-1 then", "n/a" if acc is None else f"{acc:.4f}"))
    rows += [
        ("model", f"{summary['model']} @ {summary['image_size']} px, {summary['num_classes']} classes"),
        (
            "recipe",
            f"{summary['data_size']}: lr {summary['lr']}, {summary['epochs']} epochs, batch {summary['batch_size']}"
            f" ({summary['micro_batch_size']} x {summary['accumulate_grad_batches']} x {summary['devices']}), "
            f"dropout {summary['dropout']}, aug {summary['aug']}, {summary['precision']}",
        ),
        ("wall time", f"{summary['wall_time_s']:.0f} s, {summary['epochs_completed']} epochs"),
        ("throughput", f"{summary['train_images_per_sec']:.1f} train images/s{_waiting(summary)}"),
    ]
    rows += [("stopped early", summary["stopped_early"])] if summary.get("stopped_early") else []
    for k, v in rows:
        table.add_row(k, str(v))
    out = io.StringIO()
    Console(file=out, width=max(width, 40), color_system=None, soft_wrap=False).print(table)
    paths = [("best checkpoint", summary["best_checkpoint"] or "none"), ("run folder", summary["run_dir"])]
    return out.getvalue() + "\n".join(f"{k + ':':<17}{v}" for k, v in paths)


def _waiting(summary: dict) -> str:
    wait = summary.get("data_wait_fraction")
    return "" if wait is None else f", {wait:.0%} of step time waiting for data"
