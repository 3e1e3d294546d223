"""The classifier: a timm backbone, a small head, and the LightningModule that trains it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import timm
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from effnet.errors import UserError
from effnet.network import reachable

log = logging.getLogger(__name__)


def create_backbone(name: str, drop_path: float = 0.0, image_size: int | None = None) -> nn.Module:
    """A timm model without its classifier (it returns pooled features); random weights."""
    kwargs = {}
    try:
        if image_size and timm.models.get_pretrained_cfg(name.split(".")[0]).fixed_input_size:
            kwargs["img_size"] = image_size  # ViTs build their position table for one size
    except (RuntimeError, AttributeError):
        pass
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" not in str(exc):
            raise
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise UserError(
            f"model.backbone={name}: not a timm model; similar names: {', '.join(close)}"
        ) from exc


class Head(nn.Sequential):
    """Optional hidden layers, then dropout and the classifier."""

    def __init__(
        self, in_features: int, num_classes: int, dropout: float, hidden: Sequence[int] = ()
    ) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.SiLU(inplace=True), nn.Dropout(dropout)]
            in_features = width
        layers += [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
        super().__init__(*layers)


class Classifier(nn.Module):
    """backbone -> head; a plain nn.Module so it exports as it is."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, dropout: float, hidden: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self.backbone = backbone
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.head = Head(features, num_classes, dropout, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass
class LoadReport:
    source: str
    loaded: int
    skipped_classifier: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        for label, keys in (
            ("classifier replaced", self.skipped_classifier),
            ("missing (left at init)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("shape mismatch (left at init)", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{label}: {len(keys)} [{shown}]")
        return "; ".join(parts)


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    names = backbone.pretrained_cfg.get("classifier", "classifier")
    names = names if isinstance(names, list | tuple) else [names]
    return tuple(f"{n}." for n in names)


def load_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """Load a .safetensors/.pth/.bin file into the backbone, safely (weights_only), without its classifier."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError for unsafe pickles
        if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
            raise UserError(
                f"model.weights={path}: refusing to unpickle arbitrary objects; save a plain state_dict "
                "(torch.save(model.state_dict(), f)) or .safetensors"
            ) from exc
        raise UserError(f"model.weights={path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    own = backbone.state_dict()
    prefixes = _classifier_prefixes(backbone)
    report = LoadReport(source=str(path), loaded=0)
    usable = {}
    for key, tensor in state.items():
        if key.startswith(prefixes):
            report.skipped_classifier.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif own[key].shape != tensor.shape:
            report.mismatched.append(key)
        else:
            usable[key] = tensor
    backbone.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    report.missing = [k for k in own if k not in usable and k not in report.mismatched]
    if not usable:
        raise UserError(
            f"model.weights={path}: no tensor matches {backbone.pretrained_cfg.get('architecture')}"
        )
    return report


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub: huggingface_hub itself retries for ~45 s before giving up."""
    return reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def load_pretrained(backbone: nn.Module, name: str) -> LoadReport:
    """ImageNet weights from the hub, or from its local cache with HF_HUB_OFFLINE=1.
    Offline without a cache: one line saying what to do, in seconds rather than a minute."""
    offline_fix = (
        "pass model.weights=/path/to/file (.safetensors/.pth/.bin), set HF_HUB_OFFLINE=1 to use weights "
        "already in the hub cache, or model.pretrained=false"
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false") and not hub_reachable():
        raise UserError(f"model.pretrained=true: the hub is unreachable (offline?); {offline_fix}")
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:
        raise UserError(
            f"model.pretrained=true: cannot fetch {name} weights from the hub ({type(exc).__name__}); {offline_fix}"
        ) from exc
    backbone.load_state_dict(pretrained.state_dict())
    return LoadReport(
        source=f"hub:{pretrained.pretrained_cfg.get('hf_hub_id') or name}",
        loaded=len(pretrained.state_dict()),
    )


class ClassifierModule(L.LightningModule):
    """Trains a Classifier on uint8 image batches; everything float happens on the device."""

    def __init__(
        self,
        backbone: str,
        classes: list[str],
        image_size: int,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        dropout: float = 0.2,
        hidden: Sequence[int] = (),
        drop_path: float = 0.0,
        lr: float = 1e-3,
        epochs: int = 10,
        optimizer: str = "adamw",
        weight_decay: float = 0.01,
        scheduler: str = "cosine",
        warmup_epochs: float = 1,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        erase_prob: float = 0.0,
        ema_decay: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        num_classes = len(classes)
        self.net = Classifier(
            create_backbone(backbone, drop_path, image_size), num_classes, dropout, list(hidden)
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)
        self.mixup = None
        if mixup > 0 or cutmix > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup,
                cutmix_alpha=cutmix,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self.train_loss = (
            SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        )
        self.eval_loss = nn.CrossEntropyLoss()
        self.erase = RandomErasing(erase_prob, mode="pixel", device="cpu") if erase_prob > 0 else None
        self.ema = None
        if ema_decay:
            self.ema = ModelEmaV3(self.net, decay=ema_decay, use_warmup=True)
            self.ema.requires_grad_(False)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc5 = (
            MulticlassAccuracy(num_classes, top_k=5, average="micro") if num_classes >= 5 else None
        )
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        # The last validation's (true x predicted) counts, reduced over all processes; callbacks read it.
        self.val_confusion: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW from the loader -> normalised float, on whatever device the batch is on."""
        images = (images.float() - self.mean) / self.std
        if self.hparams.channels_last:
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

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.erase is not None:
            self.erase.device = images.device
            images = self.erase(images)
        targets = labels
        if self.mixup is not None and len(images) % 2 == 0:  # timm's Mixup pairs the batch with its flip
            images, targets = self.mixup(images, labels)
        elif self.mixup is not None:
            targets = mixup_target(labels, len(self.hparams.classes), smoothing=self.hparams.label_smoothing)
        logits = self(images)
        loss = self.train_loss(logits, targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        # Against the unmixed labels: under mixup/cutmix a rough guide, not a score to compare with val.
        self.train_acc(logits.detach(), labels)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    def validation_step(self, batch, batch_idx: int) -> dict:
        images, labels = batch
        logits = self._eval_model()(images)
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

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = create_optimizer_v2(self.net, opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay)
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=hp.scheduler,
            num_epochs=hp.epochs,
            warmup_epochs=hp.warmup_epochs,
            min_lr=hp.min_lr,
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)  # timm schedulers step per update, not per call
