"""The command line as a user meets it: one line and exit 2 for a bad value, --help and a dry run
in seconds, nothing written, and no torch on the way."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_images, one_error_line, run_train

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
    (["data.root={root}", "ckpt_path=last"], "ckpt_path=last: no complete checkpoint under outputs/train"),
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


def test_the_command_line_path_imports_no_torch():
    """--help, validation and the dry run's plan arithmetic must not wait on training imports."""
    code = (
        "import sys; import effnet.cli.app, effnet.cli.validate, effnet.cli.tasks, effnet.plan, effnet.runs, "
        "effnet.checkpoints.find, effnet.recipes, effnet.preprocessing, effnet.sweeps, effnet.report; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'lightning', 'torchvision'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_dry_run_prints_the_plan_and_writes_no_run_folder(tmp_path):
    data = make_images(tmp_path / "photos" / "train", {"ants": 12, "bees": 12}).parent
    make_images(data / "val", {"ants": 4, "bees": 4}, seed=1)
    work = tmp_path / "work"
    work.mkdir()
    args = [f"data.root={data}", "preset=small", "gpu=8gb", "trainer.accelerator=cpu", "dry_run=true"]
    started = time.perf_counter()
    result = run_train(args, cwd=work)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    out = " ".join(result.stdout.split())
    for expected in (
        "2 classes, 24 train / 8 val",
        "lr 0.0005 (small row)",
        "epochs 30 (small row)",
        "batch 16 (small row)",
        "micro-batch 16 x accumulate 1 x 1 device(s) = 16",
        "augmentation heavy (small row)",
        "32-true",
        "mean (0.485, 0.456, 0.406)",
        f"python train.py data.root={data} preset=small gpu=8gb trainer.accelerator=cpu",
    ):
        assert expected in out, expected
    assert not (work / "outputs" / "train").exists(), "a dry run leaves no run folder"
    assert elapsed < 30
    lite = run_train([f"data.root={data}", "model.backbone=tf_efficientnet_lite0", "dry_run=true"], cwd=work)
    assert "mean (0.500, 0.500, 0.500), std (0.500, 0.500, 0.500)" in " ".join(lite.stdout.split())


def test_a_dry_run_of_a_bad_combination_is_one_line(tmp_path):
    data = make_images(tmp_path / "photos", {"ants": 6, "bees": 6})
    result = run_train(
        [f"data.root={data}", "data.balance=class_weights", "aug=heavy", "dry_run=true"], cwd=tmp_path
    )
    assert result.returncode == 2
    assert one_error_line(result).startswith("data.balance=class_weights does not combine with mixup")
    assert not (tmp_path / "outputs" / "train").exists()
