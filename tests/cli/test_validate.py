"""Every option of every group composes and validates; every bad value is a UserError naming it."""

import pytest
import yaml
from omegaconf import OmegaConf

from effnet.cli.validate import validate
from effnet.errors import UserError
from tests.helpers import CONF_DIR, compose_cfg

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_groups_are_the_documented_ones():
    assert GROUPS == ["data", "data_size", "gpu", "logger", "model", "preset", "sweep", "trainer"]


def leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a YAML mapping, skipping Hydra's own keys."""
    for key, value in node.items():
        if key in ("defaults", "hydra"):
            continue
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_option_composes_into_its_place_and_validates(group, option, flat_folder):
    overrides = [f"{group}={option}"]
    if option != "demo":
        overrides.append(f"data.root={flat_folder}")
    cfg = compose_cfg(overrides)
    OmegaConf.resolve(cfg)
    validate(cfg)
    path = CONF_DIR / group / f"{option}.yaml"
    text = path.read_text()
    package = "" if "@package _global_" in text else f"{group}."
    own = list(leaves(yaml.safe_load(text) or {}))
    for key, value in own:
        if f"{key.split('.')[0]}=" in " ".join(overrides[1:]):
            continue  # the test's own data.root wins over a data option's
        assert OmegaConf.select(cfg, package + key) == value, f"{path.name}: {package}{key}"


def test_model_variants_carry_their_paper_size_and_dropout():
    expected = {
        "b0": (224, 0.2),
        "b1": (240, 0.2),
        "b2": (260, 0.3),
        "b3": (300, 0.3),
        "b4": (380, 0.4),
        "b5": (456, 0.4),
        "b6": (528, 0.5),
        "b7": (600, 0.5),
    }
    for name, (size, dropout) in expected.items():
        model = compose_cfg([f"model={name}"]).model
        assert (model.image_size, model.dropout) == (size, dropout), name
        assert "efficientnet_" + name in model.backbone


def test_loggers_combine():
    cfg = compose_cfg(["logger=[csv,tensorboard,wandb]"])
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=-1", "lr=-1: must be a number > 0"),
        ("lr=abc", "lr=abc: must be a number > 0"),
        ("dropout=1.0", "dropout=1.0: must be a number in [0, 1)"),
        ("dropout=-0.1", "dropout=-0.1: must be a number in [0, 1)"),
        ("batch_size=0", "batch_size=0: must be an integer >= 1"),
        ("epochs=2.5", "epochs=2.5: must be an integer >= 1"),
        ("aug=extreme", "aug=extreme: must be one of: light, standard, heavy"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5: must be a number in (0, 1)"),
        ("trainer.precision=bf17", "trainer.precision=bf17: must be one of"),
        ("model.head.hidden=[0]", "model.head.hidden=[0]: must be a list of layer widths"),
        ("data_size.rows.small.lr=-2", "data_size.rows.small.lr=-2: must be a number > 0"),
        ("dry_run=maybe", "dry_run=maybe: must be true or false"),
        ("data.num_workers=true", "data.num_workers=True: must be auto or an integer >= 0"),
        ("model.preprocessing.mean=[0.5,0.5]", "model.preprocessing.mean=[0.5, 0.5]: must be [r, g, b]"),
        ("model.preprocessing.std=[0,1,1]", "model.preprocessing.std=[0, 1, 1]: must be [r, g, b] > 0"),
        (
            "model.preprocessing.crop_pct=1.5",
            "model.preprocessing.crop_pct=1.5: must be a number in [0.1, 1]",
        ),
        (
            "model.preprocessing.interpolation=cubic",
            "model.preprocessing.interpolation=cubic: must be one of: bicubic",
        ),
        (
            "train.monitor=val/accuracy",
            "train.monitor=val/accuracy: must be one of the metrics effnet logs: val/acc, val/loss, val/f1",
        ),
        ("train.monitor_mode=maximum", "train.monitor_mode=maximum: must be one of: auto, max, min"),
        ("train.early_stopping.patience=0", "train.early_stopping.patience=0: must be an integer >= 1"),
        ("train.early_stopping.min_delta=-1", "train.early_stopping.min_delta=-1: must be a number >= 0"),
    ],
)
def test_bad_values_are_rejected_in_process(override, message, flat_folder):
    cfg = compose_cfg([f"data.root={flat_folder}", override])
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert message in str(err.value)


def test_the_monitor_resolves_its_mode_and_top5_needs_five_classes():
    from effnet.plan import records

    cfg = compose_cfg([])

    def watched(monitor: str, mode: str = "auto", classes: int | None = None):
        cfg.train.monitor, cfg.train.monitor_mode = monitor, mode
        return records(cfg, classes)

    assert [watched(m).monitor_mode for m in ("val/loss", "train/loss_epoch", "val/f1", "val/acc")] == [
        "min",
        "min",
        "max",
        "max",
    ]
    assert watched("val/loss", "max").monitor_mode == "max"
    assert watched("val/acc5", classes=5).monitor == "val/acc5"
    with pytest.raises(
        UserError, match="top-5 accuracy is logged only with 5 classes or more, and this data has 3"
    ):
        watched("val/acc5", classes=3)
