"""lr=find: Lightning's learning-rate range test on the run's own model, data and batch, instead
of training.

The start is a training run's (effnet.start: the plan, the split, the run folder), and the module,
the loader and the Trainer are built from the plan as effnet.training.train builds them, so the
finder steps exactly what training would. Lightning's finder (lightning.pytorch.tuner.Tuner.lr_find)
then raises the lr exponentially, one optimizer step per batch, from lr_find.min_lr to
lr_find.max_lr, and suggests the lr where the smoothed loss falls fastest. What it leaves: the plot
(lr_find.png) and the numbers (lr_find.json) in the run folder, and the command that trains with
the suggestion. The model is not trained and no checkpoint is kept: the finder's own (it restores
the starting weights from it) lives in a scratch folder that goes with it.
"""

from __future__ import annotations

import logging
import math
import shlex
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.tuner import Tuner

from effnet.data import pixels
from effnet.errors import UserError, held_warnings
from effnet.files import write_json
from effnet.plan import RunPlan
from effnet.plots import lr_find_png
from effnet.start import Start
from effnet.training import launch
from effnet.training.module import ClassifierModule
from effnet.training.train import check_trainer_keys, data_module, quiet_libraries

log = logging.getLogger("effnet")

PNG = "lr_find.png"
JSON = "lr_find.json"


class SweptModule(ClassifierModule):
    """The run's module, stepped by the finder's schedule.

    Lightning's finder replaces the scheduler by its own (a torch one: stepped with step(), where
    training's timm schedulers step per update) and gives every parameter group the same lr. A
    pretrained backbone's groups keep their share of it here, as in training (timm's `lr_scale`,
    optimizer.backbone_lr_scale), so the suggestion is the head's lr of a run that trains both."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stepped: list[tuple[float, float]] = []  # (head, backbone) lr of each optimizer step

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()

    def on_before_optimizer_step(self, optimizer) -> None:
        swept = self.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
        for group in optimizer.param_groups:
            group["lr"] = swept * group.get("lr_scale", 1.0)
        self.stepped.append((swept, optimizer.param_groups[0]["lr"]))  # the backbone's groups come first


def find(begun: Start) -> dict:
    """Run the finder for the run `begun` sets up; on rank 0 write lr_find.png and lr_find.json
    into its folder and print the suggestion and the command that trains with it. Returns what
    lr_find.json holds. UserError when the loss gave no suggestion."""
    with pixels.limited(begun.plan.records.max_image_pixels):
        return _find(begun)


def _find(begun: Start) -> dict:
    plan, run_dir = begun.plan, begun.run_dir
    sweep = plan.lr_find
    quiet_libraries()
    check_trainer_keys(plan.trainer)
    L.seed_everything(plan.seed, workers=True, verbose=False)
    with held_warnings():  # a torch warning about the user's weights must not precede its one line
        torch.set_num_threads(plan.loading.threads)
        module = SweptModule(**plan.module_args(), init=plan.init)
    loader = data_module(plan, begun.split).train_dataloader()  # no validation: the finder skips it
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
    # Lightning's finder saves the starting state beside it and restores it afterwards: in a
    # scratch folder of the run's (room for a large model's checkpoint), gone when it is done.
    with tempfile.TemporaryDirectory(prefix=".lr_find-", dir=run_dir) as scratch:
        trainer = L.Trainer(
            **{
                **plan.trainer_args(),
                "strategy": launch.strategy(plan.strategy, plan.world_size, plan.ddp_timeout_s),
            },
            default_root_dir=scratch,
            logger=False,
            callbacks=[],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        finder = Tuner(trainer).lr_find(
            module,
            train_dataloaders=loader,
            min_lr=sweep.min_lr,
            max_lr=sweep.max_lr,
            num_training=sweep.steps,
            update_attr=False,  # nothing trains after it: the suggestion is printed, not used
        )
    lrs = [float(v) for v in finder.results["lr"]]
    losses = [float(v) for v in finder.results["loss"]]
    suggestion = steepest(lrs, losses)
    if suggestion is None:
        raise UserError(
            f"lr=find: no suggestion: the loss gave too few finite points in {len(lrs)} steps "
            f"(it diverged early?); try a lower lr_find.max_lr (now {sweep.max_lr:g})"
        )
    record = {
        "suggestion": float(suggestion),
        "backbone_lr_scale": plan.optimisation.backbone_lr_scale,
        "min_lr": sweep.min_lr,
        "max_lr": sweep.max_lr,
        "steps": sweep.steps,
        "steps_run": len(lrs),
        "command": command_with_lr(plan.command, suggestion),
        "lr": lrs,
        "loss": [v if math.isfinite(v) else None for v in losses],
        "optimizer_lrs": [list(pair) for pair in module.stepped],  # (head, backbone) the optimizer used
    }
    if trainer.is_global_zero:
        lr_find_png(
            lrs,
            losses,
            lrs.index(suggestion),
            run_dir / PNG,
            title=plot_title(plan, len(lrs)),
            axis=axis(plan),
        )
        write_json(run_dir / JSON, record)
        print(report(plan, record, run_dir), flush=True)
    return record


def steepest(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The lr where the smoothed loss falls fastest per decade of lr, as the curve is drawn;
    None with fewer than two finite points.

    Lightning's own FinderResult.suggestion (2.6) differentiates against the lr itself, not its
    logarithm (Lightning-AI/pytorch-lightning#21141): on log-spaced steps that weights the
    smallest lrs' wiggles by 1/lr and, on a pretrained backbone's flat start, suggested 9e-6 where
    the loss fell fastest at 2.6e-3 (hymenoptera, Lite0, 160 px). The same skips as Lightning's:
    the first steps' smoothing is still warming up, the last one has often diverged."""
    kept = [i for i in range(skip_begin, len(lrs) - skip_end) if math.isfinite(losses[i]) and lrs[i] > 0]
    if len(kept) < 2:
        return None
    x = torch.tensor([math.log10(lrs[i]) for i in kept], dtype=torch.float64)
    y = torch.tensor([losses[i] for i in kept], dtype=torch.float64)
    slope = torch.gradient(y, spacing=(x,))[0]
    return lrs[kept[int(torch.argmin(slope))]]


def command_with_lr(command: str, lr: float) -> str:
    """The run's command line with lr=find replaced by lr=<lr> (or lr=<lr> added)."""
    words = shlex.split(command)
    setting = f"lr={lr:.2g}"
    keys = [w.lstrip("+~").split("=", 1)[0] for w in words]
    if "lr" in keys:
        words[keys.index("lr")] = setting
    else:
        words.append(setting)
    return shlex.join(words)


def varied(plan: RunPlan, steps: int) -> str:
    """What the finder varied, in words."""
    sweep, scale = plan.lr_find, plan.optimisation.backbone_lr_scale
    what = "the head's lr" if scale != 1.0 else "the lr (one for every layer)"
    said = f"varied {what} from {sweep.min_lr:g} to {sweep.max_lr:g} over {steps} steps"
    if steps < sweep.steps:
        said += f" (of {sweep.steps}: the loss diverged)"
    if scale != 1.0:
        said += f"; the pretrained backbone's lr followed at x{scale:g}"
    return said


def plot_title(plan: RunPlan, steps: int) -> str:
    return f"lr=find: {plan.network.backbone}, batch {plan.recipe.batch_size}\n{varied(plan, steps)}"


def axis(plan: RunPlan) -> str:
    scale = plan.optimisation.backbone_lr_scale
    return "learning rate" if scale == 1.0 else f"learning rate of the head (the backbone's: x{scale:g})"


def report(plan: RunPlan, record: dict, run_dir: Path) -> str:
    lr, scale = record["suggestion"], record["backbone_lr_scale"]
    backbone = f" (the backbone's {lr * scale:.2g})" if scale != 1.0 else ""
    return "\n".join(
        [
            f"lr=find: {varied(plan, record['steps_run'])}",
            f"suggested lr: {lr:.2g}{backbone}, where the loss fell fastest",
            f"train with it: {record['command']}",
            f"the curve: {run_dir / PNG} (numbers: {JSON}); nothing was trained",
        ]
    )
