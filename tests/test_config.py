"""Every option of every group composes; every bad value is one line, exit 2, fast, nothing written."""

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from effnet.config import validate
from effnet.errors import UserError
from tests.conftest import CONF_DIR, compose_cfg, run_train

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_groups_are_the_documented_ones():
    assert GROUPS == ["data", "data_size", "gpu", "logger", "model", "preset", "sweep", "trainer"]


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_option_composes_and_validates(group, option, flat_folder):
    overrides = [f"{group}={option}"]
    if option != "demo":
        overrides.append(f"data.root={flat_folder}")
    cfg = compose_cfg(overrides)
    OmegaConf.resolve(cfg)
    validate(cfg)


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
    ],
)
def test_bad_values_are_rejected_in_process(override, message, flat_folder):
    cfg = compose_cfg([f"data.root={flat_folder}", override])
    with pytest.raises(UserError) as err:
        validate(cfg)
    assert message in str(err.value)


CLI_CASES = [
    ([], "data.root is required: python train.py data.root="),
    (["data.root=/no/such/folder"], "data.root=/no/such/folder: folder not found"),
    (["data.root={empty}"], "no images found"),
    (["data.root={root}", "lr=-1"], "lr=-1: must be a number > 0"),
    (["data.root={root}", "dropout=1.0"], "dropout=1.0: must be a number in [0, 1)"),
    (["data.root={root}", "batch_size=0"], "batch_size=0: must be an integer >= 1"),
    (["data.root={root}", "preset=huge"], "preset=huge: unknown option; choose one of: cloud, edge, large"),
    (["data.root={root}", "model=b9"], "model=b9: unknown option; choose one of: b0, b1"),
    (
        ["data.root={root}", "gpu=12gb"],
        "gpu=12gb: unknown option; choose one of: 16gb, 24gb, 40gb, 4gb, 80gb, 8gb, auto, cpu",
    ),
    (
        ["data.root={root}", "lrr=1e-3"],
        "unknown key 'lrr' (did you mean lr?); to add a new key write +lrr=1e-3",
    ),
    (
        ["data.root={root}", "model.pretraind=false"],
        "unknown key 'model.pretraind' (did you mean pretrained?)",
    ),
    (["data.root={root}", "ckpt_path=last"], "ckpt_path=last: no outputs/train/*/checkpoints/last.ckpt"),
    (["data.root={root}", "model.weights=/nope.pth"], "model.weights=/nope.pth: file not found"),
]


@pytest.mark.parametrize("args, message", CLI_CASES, ids=[" ".join(a) or "no-args" for a, _ in CLI_CASES])
def test_cli_rejects_with_one_line_fast_and_writes_nothing(args, message, flat_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    args = [a.format(root=flat_folder, empty=empty) for a in args]
    started = time.perf_counter()
    result = run_train(args, cwd=work)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("effnet: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(work.iterdir()) == [], "nothing may be written"
    assert elapsed < 5, f"took {elapsed:.1f}s"


def test_help_is_fast_and_lists_the_groups(tmp_path):
    started = time.perf_counter()
    result = run_train(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert time.perf_counter() - started < 5
    for group in ("preset: cloud, edge, large, medium, mobile, small, xlarge", "gpu: 16gb", "model: b0, b1"):
        assert group in result.stdout
    assert list(Path(tmp_path).iterdir()) == []
