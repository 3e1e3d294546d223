"""The LightningModule that trains a Classifier on uint8 image batches.

Its constructor builds exactly what trains, from the sections of the run plan (network,
preprocessing, optimisation, regularisation, runtime) plus the starting weights: nothing is
patched on afterwards. The checkpoint carries the sections, so eval, predict and export rebuild the
same network (effnet.checkpoints.read); `init` is not saved, so rebuilding never fetches weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning as L
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from effnet.data.balance import WeightedCrossEntropy
from effnet.metrics import TOP5_MIN_CLASSES
from effnet.plan import Network, Optimisation, Regularisation, Runtime
from effnet.preprocessing import Preprocessing
from effnet.training import model, weights

log = logging.getLogger("effnet")


def _section(cls, values: Mapping | None):
    """A plan section from the plain dict a checkpoint holds (unknown keys ignored)."""
    fields = cls.__dataclass_fields__
    values = {k: v for k, v in (values or {}).items() if k in fields}
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    return cls(**values)


class ClassifierModule(L.LightningModule):
    """Everything float happens on the device: normalisation, erasing, mixup, the network."""

    def __init__(
        self,
        network: Mapping,
        preprocessing: Mapping,
        optimisation: Mapping | None = None,
        regularisation: Mapping | None = None,
        runtime: Mapping | None = None,
        init: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["init"])
        self.spec = _section(Network, network)
        self.preprocessing = Preprocessing.from_dict(preprocessing)
        self.optimisation = _section(Optimisation, optimisation)
        self.regularisation = reg = _section(Regularisation, regularisation)
        self.runtime = _section(Runtime, runtime)
        num_classes = len(self.spec.classes)

        self.net = self._build_net(init)
        prep = self.preprocessing
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1) * 255, persistent=False)
        self.example_input_array = torch.zeros(1, 3, prep.image_size, prep.image_size, dtype=torch.uint8)

        self.mixup = None
        if reg.mixup > 0 or reg.cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=reg.mixup,
                cutmix_alpha=reg.cutmix,
                label_smoothing=reg.label_smoothing,
                num_classes=num_classes,
            )
        if self.mixup is not None:
            self.train_loss = SoftTargetCrossEntropy()
        elif reg.class_weights is not None:
            self.train_loss = WeightedCrossEntropy(torch.tensor(reg.class_weights), reg.label_smoothing)
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=reg.label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        self.erase = RandomErasing(reg.erase_prob, mode="pixel", device="cpu") if reg.erase_prob > 0 else None
        self.ema = None
        if self.optimisation.ema_decay:  # averaged from the starting weights on
            self.ema = ModelEmaV3(self.net, decay=self.optimisation.ema_decay, use_warmup=True)
            self.ema.requires_grad_(False)
        if self.runtime.compile:
            # In place, after the EMA's copy: the state_dict keeps its key names (no `_orig_mod.`),
            # so checkpoints, resume and export read the same file either way. Compiles on the
            # first forward.
            self.net.compile()

        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc5 = (
            MulticlassAccuracy(num_classes, top_k=5, average="micro")
            if num_classes >= TOP5_MIN_CLASSES
            else None
        )
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        # The last validation's (true x predicted) counts, reduced over all processes; callbacks read it.
        self.val_confusion: torch.Tensor | None = None

    def _build_net(self, init: str | None) -> nn.Module:
        """The network with its starting weights, in the form it will train in."""
        spec, runtime = self.spec, self.runtime
        net = model.build(
            spec.backbone, spec.classes, spec.image_size, spec.dropout, spec.hidden, spec.drop_path
        )
        if init is not None:
            log.info("weights: %s", weights.initialise(net.backbone, init, spec.backbone))
        if runtime.grad_checkpointing:
            net.backbone.set_grad_checkpointing(True)
        if runtime.sync_batchnorm:  # timm's converter keeps BatchNormAct's fused activation
            from timm.layers import convert_sync_batchnorm

            net = convert_sync_batchnorm(net)
        if runtime.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW from the loader -> normalised float, on whatever device the batch is on."""
        images = (images.float() - self.mean) / self.std
        if self.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def to_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """Undo normalize(): the loader's uint8 pixels again, for pictures of what the model saw."""
        return (images.float() * self.std + self.mean).round().clamp(0, 255).to(torch.uint8)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, torch.Tensor):  # the model summary's example input
            return self.normalize(batch)
        images, labels = batch
        return self.normalize(images), labels

    def augment(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The device's share of the augmentation, on a normalised batch: erasing, then mixup or
        cutmix. Returns the images the network trains on and their (soft, under mixup) targets."""
        if self.erase is not None:
            self.erase.device = images.device
            images = self.erase(images)
        targets = labels
        if self.mixup is not None and len(images) % 2 == 0:  # timm's Mixup pairs the batch with its flip
            images, targets = self.mixup(images, labels)
        elif self.mixup is not None:
            targets = mixup_target(
                labels, len(self.spec.classes), smoothing=self.regularisation.label_smoothing
            )
        return images, targets

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        images, targets = self.augment(images, labels)
        logits = self(images)
        loss = self.train_loss(logits, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        # Against the unmixed labels: under mixup/cutmix a rough guide, not a score to compare with val.
        self.train_acc(logits.detach(), labels)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def eval_model(self) -> nn.Module:
        """What validation scores and deployment exports: the EMA average when the run keeps one."""
        return self.ema.module if self.ema is not None else self.net

    def validation_step(self, batch, batch_idx: int) -> dict:
        images, labels = batch
        logits = self.eval_model()(images)
        self.log(
            "val/loss", self.eval_loss(logits, labels), on_epoch=True, sync_dist=True, batch_size=len(images)
        )
        self.val_acc(logits, labels)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(images))
        if self.val_acc5 is not None:
            self.val_acc5(logits, labels)
            self.log("val/acc5", self.val_acc5, on_epoch=True, batch_size=len(images))
        self.val_f1(logits, labels)
        self.log("val/f1", self.val_f1, on_epoch=True, batch_size=len(images))
        self.val_confmat(logits, labels)
        return {"logits": logits.detach()}  # for callbacks that show predictions

    def on_validation_epoch_end(self) -> None:
        # compute() reduces over all processes, so every rank must call it; rank 0 draws it.
        self.val_confusion = self.val_confmat.compute().cpu()
        self.val_confmat.reset()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # once per optimizer step, so accumulation does not skew the decay
            self.ema.update(self.net, step=self.global_step)

    def param_groups(self, net: nn.Module) -> list[dict]:
        """timm's weight-decay groups (no decay for biases and norms), the backbone's at
        backbone_lr_scale: timm's schedulers multiply each group's lr by its `lr_scale`."""
        scale, decay = self.optimisation.backbone_lr_scale, self.optimisation.weight_decay
        groups = [{**g, "lr_scale": scale} for g in param_groups_weight_decay(net.backbone, decay)]
        return groups + param_groups_weight_decay(net.head, decay)

    def configure_optimizers(self):
        opt = self.optimisation
        optimizer = create_optimizer_v2(
            self.net,
            opt=opt.optimizer,
            lr=opt.lr,
            weight_decay=opt.weight_decay,
            # one lr for every parameter: timm's own grouping, as checkpoints before the scale have it
            param_group_fn=self.param_groups if opt.backbone_lr_scale != 1.0 else None,
        )
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=opt.scheduler,
            num_epochs=opt.epochs,
            warmup_epochs=opt.warmup_epochs,
            min_lr=opt.min_lr,
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers step per update, not per call
