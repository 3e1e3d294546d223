"""The fine-tuned network as a timm model: a folder that plain timm loads, effnet not installed.

    timm.create_model("local-dir:<bundle>/timm", pretrained=True)

effnet's Classifier is a timm backbone built with num_classes=0 (`net.backbone.*`, timm's own key
names) and a head of dropout + Linear. The same timm architecture built with num_classes=N has
exactly those keys plus its classifier, a Linear of the same shape: the head's weights go there
and nothing else changes. A head with hidden layers (`model.head.hidden`) has no counterpart in
timm's classifiers, so it gets no folder. timm's own `save_for_hf` writes the weights and the
config.json its local-dir loader reads, with the run's preprocessing as the data config (what
`timm.data.resolve_data_config({}, model=m)` then returns) and the class names as label_names.

Dropout is not carried: timm records no drop rates in an export (they are training settings), and
eval mode ignores them, so the logits are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from effnet.deploy.bundle import Uint8Classifier
from effnet.deploy.predict import Predictor, torch_forward
from effnet.preprocessing import Preprocessing
from effnet.training import model as effnet_model

FOLDER = "timm"
WEIGHTS_FILE = "model.safetensors"


def unsupported(net: nn.Module) -> str | None:
    """Why the network has no timm equivalent, or None."""
    head = getattr(net, "head", None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    if len(linears) != 1:
        return "its head has hidden layers (model.head.hidden), which no timm classifier has"
    return None


def as_timm(net: nn.Module, backbone: str, image_size: int) -> nn.Module:
    """The timm model (num_classes = the run's classes) holding `net`'s weights, in eval mode."""
    import timm

    (linear,) = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    twin = timm.create_model(
        backbone,
        pretrained=False,
        num_classes=linear.out_features,
        **effnet_model.size_kwargs(backbone, image_size),
    )
    missing, unexpected = twin.load_state_dict(net.backbone.state_dict(), strict=False)
    classifier = twin.get_classifier()
    names = {f"{name}.{p}" for name, m in twin.named_modules() if m is classifier for p in ("weight", "bias")}
    if unexpected or set(missing) != names or not isinstance(classifier, nn.Linear):
        raise RuntimeError(  # a timm architecture whose num_classes=0 build is not its body: a bug to report
            f"{backbone}: timm's model does not match effnet's backbone "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)}, classifier {type(classifier).__name__})"
        )
    classifier.load_state_dict(linear.state_dict())
    return twin.eval()


def write(net: nn.Module, backbone: str, prep: Preprocessing, classes: Sequence[str], folder: Path) -> Path:
    """`folder`/model.safetensors and config.json, as timm's save_for_hf writes them."""
    from timm.models import save_for_hf

    twin = as_timm(net, backbone, prep.image_size)
    data_config = {
        "input_size": (3, prep.image_size, prep.image_size),
        "interpolation": prep.interpolation,
        "mean": tuple(prep.mean),
        "std": tuple(prep.std),
        "crop_pct": prep.crop_pct,
        "crop_mode": "center",
    }
    save_for_hf(
        twin,
        str(folder),
        model_config={"label_names": list(classes)},
        safe_serialization=True,
        data_config=data_config,
    )
    return folder / WEIGHTS_FILE


def load(folder: Path) -> Predictor:
    """The folder loaded as a timm user would (`local-dir:`), its preprocessing and class names
    read back from timm's own data config: what export verifies against PyTorch."""
    import timm
    from timm.data import resolve_data_config

    twin = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    data = resolve_data_config({}, model=twin)
    prep = Preprocessing(
        image_size=int(data["input_size"][-1]),
        crop_pct=float(data["crop_pct"]),
        interpolation=str(data["interpolation"]),
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
    )
    return Predictor(
        name="timm",
        path=folder / WEIGHTS_FILE,
        classes=list(twin.pretrained_cfg["label_names"]),
        prep=prep,
        forward=torch_forward(Uint8Classifier(twin, prep.mean, prep.std).eval()),
    )
