"""How pixels reach the network: resize, crop, interpolation and normalisation, taken from the
backbone's own pretrained config.

A backbone pretrained with other statistics than ImageNet's (every `tf_efficientnet_lite*` and
`vit_base_patch16_224` use mean = std = 0.5) must be fine-tuned, evaluated and exported with them,
or every input is scaled wrongly. timm knows each backbone's values; `resolve` asks it once, the
user's `model.preprocessing.*` wins, and the run plan, the checkpoint and the export bundle's
preprocessing.json all carry the result. Importing this module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from effnet.errors import UserError
from effnet.files import write_json

KEYS = ("mean", "std", "crop_pct", "interpolation")


@dataclass(frozen=True)
class Preprocessing:
    """timm's eval transform (resize the short side to floor(size / crop_pct), centre crop) and
    the normalisation applied inside the network. Written as preprocessing.json in a bundle."""

    image_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def resize(self) -> int:
        return int(self.image_size / self.crop_pct)  # floor, as timm's eval transform

    def as_dict(self) -> dict:
        """Plain values, as the checkpoint's hyper-parameters carry them (weights_only-loadable)."""
        raw = asdict(self)
        return {**raw, "mean": list(raw["mean"]), "std": list(raw["std"])}

    def to_json(self) -> dict:
        return {
            **self.as_dict(),
            "resize_shorter_side": self.resize,
            "input": "uint8 RGB, NCHW, values 0-255",
            "steps": [
                "decode as RGB (EXIF orientation applied)",
                f"resize the shorter side to {self.resize} px ({self.interpolation})",
                f"centre crop {self.image_size} x {self.image_size}",
                "uint8 CHW, no scaling: the model computes (x - 255*mean) / (255*std) itself",
            ],
        }

    @classmethod
    def from_dict(cls, raw: Mapping) -> Preprocessing:
        return cls(
            image_size=int(raw["image_size"]),
            crop_pct=float(raw["crop_pct"]),
            interpolation=str(raw["interpolation"]),
            mean=tuple(float(v) for v in raw["mean"]),
            std=tuple(float(v) for v in raw["std"]),
        )

    def transform(self):
        """The exact transform validation uses (effnet.data.transforms.eval_transform)."""
        from effnet.data.transforms import eval_transform  # here: it imports timm; this module, no torch

        return eval_transform(self.image_size, self.crop_pct, self.interpolation)


@cache
def pretrained_config(backbone: str) -> dict:
    """timm's pretrained config of a backbone (`name` or `name.tag`), without building the model.

    Raises UserError, with similar names, for a name timm does not know.
    """
    import timm

    base = backbone.split(".")[0]
    if not timm.is_model(base):
        close = timm.list_models(f"*{base.split('_')[0]}*")[:8]
        raise UserError(f"model.backbone={backbone}: not a timm model; similar names: {', '.join(close)}")
    cfg = timm.models.get_pretrained_cfg(backbone, allow_unregistered=False)
    return cfg.to_dict() if cfg is not None else {}


def resolve(backbone_cfg: Mapping, image_size: int, overrides: Mapping) -> Preprocessing:
    """The backbone's values (timm's defaults where it has none), each overridable by the user."""
    from timm.data import resolve_data_config

    args = {k: v for k, v in overrides.items() if v is not None and k in KEYS}
    resolved = resolve_data_config(args, pretrained_cfg=dict(backbone_cfg), use_test_size=False)
    return Preprocessing(
        image_size=int(image_size),
        crop_pct=float(resolved["crop_pct"]),
        interpolation=str(resolved["interpolation"]),
        mean=tuple(float(v) for v in resolved["mean"]),
        std=tuple(float(v) for v in resolved["std"]),
    )


def for_backbone(
    backbone: str, image_size: int, overrides: Mapping, cache_dir: Path | None = None
) -> Preprocessing:
    """`resolve(pretrained_config(backbone), ...)`, remembered in `cache_dir` per backbone, size,
    overrides and timm version: importing timm is most of a start's fixed cost, and a second
    start (a dry run, then the run) needs none of it. A name timm does not know is never cached;
    a new entry is written by `save_cache`."""
    from importlib.metadata import version

    args = {k: overrides[k] for k in sorted(overrides)} if overrides else {}
    key = json.dumps([backbone, int(image_size), args, version("timm")], default=str)
    path = (
        None
        if cache_dir is None
        else cache_dir / f"preprocessing-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    )
    if path is not None:
        try:
            return Preprocessing.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not cached yet, or unreadable: ask timm
    prep = resolve(pretrained_config(backbone), image_size, overrides)
    if path is not None:
        _unsaved[path] = prep.as_dict()  # written by save_cache, once the start goes on
    return prep


_unsaved: dict[Path, dict] = {}


def save_cache() -> None:
    """Write what `for_backbone` resolved: a start that ends without a run (a refused value, a
    resume of a finished run) writes nothing, as with the scan's cache."""
    while _unsaved:
        path, raw = _unsaved.popitem()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, raw)
        except OSError:
            pass  # a cache that cannot be written costs the next start the timm import, nothing else
