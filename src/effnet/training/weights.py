"""Where a backbone's starting weights come from: a file, timm's hub (or its cache), or nowhere.

Every load ends in a LoadReport, logged as one line, so a user sees which tensors came from where.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import timm
from torch import nn

from effnet.errors import UserError
from effnet.online import reachable


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


def initialise(backbone: nn.Module, init: str, name: str) -> str:
    """Load the starting weights the plan names ("pretrained" or a file path); the report, in words."""
    if init == "pretrained":
        return str(load_pretrained(backbone, name))
    return str(load_weights(backbone, init))
