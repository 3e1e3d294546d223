"""The command line as a user meets it: one line and exit 2 for a bad value, --help and a dry run
in seconds, nothing written, and no torch on the way."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import TRAIN_PY, WarmEntry, compose_cfg, make_images, one_error_line, run_train, tree

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
        "unknown key 'lrr' (did you mean lr?)",
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
    result = run_train(args, cwd=work)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("effnet: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(work.iterdir()) == [], "nothing may be written"


def test_help_lists_the_groups(tmp_path):
    """Fast by construction (no torch import: test_the_command_line_path_imports_no_torch), not by a clock."""
    result = run_train(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    for group in ("preset: cloud, edge, large, medium, mobile, small, xlarge", "gpu: 16gb", "model: b0, b1"):
        assert group in result.stdout
    assert list(Path(tmp_path).iterdir()) == []


def test_an_entry_script_leaves_its_objects_out_of_the_collections_at_exit(tmp_path):
    """Python's collections while it tears torch, Lightning and timm down took seconds at the end
    of every command; the entry scripts freeze what is alive at exit (effnet.cli.app.quick_exit).
    The probe is registered before train.py runs, so it runs after every handler train.py adds."""
    code = (
        "import atexit, gc, runpy, sys; "
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0)); "
        f"sys.argv = [{str(TRAIN_PY)!r}, '--help']; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "frozen at exit: True"


def test_the_command_line_path_imports_no_torch():
    """--help, validation and the dry run's plan arithmetic must not wait on training imports."""
    code = (
        "import sys; import effnet.cli.app, effnet.cli.validate, effnet.cli.tasks, effnet.plan, effnet.run_names, "
        "effnet.checkpoints.find, effnet.recipes, effnet.preprocessing, effnet.sweep_jobs, effnet.report; "
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
    result = run_train(args, cwd=work)
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
    lite = run_train([f"data.root={data}", "model.backbone=tf_efficientnet_lite0", "dry_run=true"], cwd=work)
    assert "mean (0.500, 0.500, 0.500), std (0.500, 0.500, 0.500)" in " ".join(lite.stdout.split())


def test_a_dry_run_of_a_bad_combination_is_one_line(tmp_path):
    data = make_images(tmp_path / "photos", {"ants": 6, "bees": 6})
    result = run_train(
        [
            f"data.root={data}",
            "data.balance=class_weights",
            "aug=heavy",
            "augment.heavy.cutmix=1.0",
            "dry_run=true",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert one_error_line(result).startswith("data.balance=class_weights does not combine with mixup")
    assert not (tmp_path / "outputs" / "train").exists()


# ---------------------------------------------------------------------------------------------
# The whole surface of the four commands: every bad input is one line `effnet: error: ...`, exit
# status 2, no traceback, and nothing written (the working folder stays empty, the folders the
# command was pointed at are unchanged). Each case is its own process, forked from one warm
# interpreter (tests.helpers.WarmEntry); `heavy` says whether the case may import torch (it
# has to read a model or a checkpoint to know), else it must fail before.

# (args, expected part of the message, heavy)
TRAIN_CASES = {
    "train": [
        # paths and what is at them
        ([], "data.root is required", False),
        (["data.root=null"], "data.root is required", False),
        (["data.root={missing}"], "data.root={missing}: folder not found", False),
        (["data.root={notes}"], "data.root={notes}: is a file", False),
        (["data.root={empty}"], "no images found", False),
        (["data.root={one_class}"], "found one class (only)", False),
        (["data.root={data}", "model.weights={missing}"], "model.weights={missing}: file not found", False),
        (["data.root={data}", "model.weights={empty}"], "model.weights={empty}: file not found", False),
        (["data.root={data}", "model.weights={notes}"], "model.weights={notes}: expected one of", False),
        (["data.root={data}", "ckpt_path=last"], "ckpt_path=last: no complete checkpoint under", False),
        (["data.root={data}", "ckpt_path={missing}"], "ckpt_path={missing}: not found", False),
        (["data.root={data}", "ckpt_path={empty}"], "ckpt_path={empty}: no complete checkpoint in", False),
        (["data.root={data}", "ckpt_path={garbage_ckpt}"], "truncated or not a checkpoint", False),
        (["data.root={data}", "ckpt_path={cut_ckpt}"], "truncated or not a checkpoint", False),
        (
            ["data.root={data}", "ckpt_path={evil_ckpt}"],
            "refusing to load, it needs arbitrary unpickling",
            True,
        ),
        (["data.root={data}", "ckpt_path={notours_ckpt}"], "not an effnet checkpoint", True),
        (["data.root={data}", "hydra.run.dir={unwritable}/run"], "cannot create the run folder", False),
        (["data.root={data}", "hydra.run.dir={notes}"], "exists and is not a folder", False),
        # keys, options and flags
        (["data.root={data}", "lrr=1e-3"], "unknown key 'lrr' (did you mean lr?)", False),
        (["data.root={data}", "trainer.max_epoch=3"], "unknown key 'trainer.max_epoch'", False),
        (
            ["data.root={data}", "+trainer.max_epoch=3"],
            "+trainer.max_epoch=3: no such key; nearest: trainer.",
            False,
        ),
        (["data.root={data}", "model=b9"], "model=b9: unknown option", False),
        (["data.root={data}", "data=nope"], "data=nope: unknown option", False),
        (["data.root={data}", "logger=nope"], "logger=nope: unknown option", False),
        (["data.root={data}", "trainer=tpu"], "trainer=tpu: unknown option", False),
        (["data.root={data}", "--no-such-flag"], "unknown option --no-such-flag", False),
        (["data.root={data}", "--cfg", "everything"], "argument --cfg/-c: invalid choice", False),
        # overrides Hydra cannot read
        (["data.root={data}", "lr"], "missing EQUAL", False),
        (["data.root={data}", "lr=[1"], "no viable alternative at input '[1'", False),
        (["data.root={data}", "lr==1"], "Error parsing override 'lr==1'", False),
        (["data.root={data}", "~nope"], "Could not delete from config", False),
        (["data.root={data}", "lr=${{foo}}"], "lr: cannot resolve its ${{...}} interpolation", False),
        (["data.root={data}", "lr=${{oc.env:EFFNET_NO_SUCH_VARIABLE}}"], "cannot resolve", False),
        # values that only the combination makes wrong
        (
            ["data.root={data}", "-m", "lr=1e-3,1e-4", "dry_run=true"],
            "dry_run=true shows one run's plan",
            False,
        ),
        (["data.root={data}", "lr=banana"], "lr=banana: must be a number > 0, e.g. lr=1e-3, or find", False),
        (["data.root={data}", "-m", "lr=find", "seed=1,2"], "lr=find runs the finder once", False),
        (["data.root={data}", "lr=find", "ckpt_path={run}"], "lr=find with ckpt_path=", False),
        (
            ["data.root={data}", "dry_run=true", "show_batch=true", "dashboards.train_batch=0"],
            "show_batch=true with dashboards.train_batch=0 draws no image",
            False,
        ),
        (["data.root={data}", "quantize=int8"], "unknown key 'quantize'", False),
        (["data.root={data}", "trainer.devices=abc"], "trainer.devices=abc: must be auto, -1", False),
        (["data.root={data}", "data_size.rows.small.lr=-2"], "data_size.rows.small.lr=-2: must be", False),
        (
            ["data.root={data}", "data_size=medium", "data_size.epochs=0"],
            "data_size.epochs=0: must be",
            False,
        ),
    ],
    "bench": [
        (["data.root={data}", "lr=find"], "lr=find runs with train.py", False),
    ],
    "eval": [
        ([], "ckpt is required", False),
        (["ckpt={missing}"], "ckpt={missing}: not found", False),
        (["ckpt={garbage_ckpt}"], "truncated or not a checkpoint", False),
        (["ckpt={empty}"], "no complete checkpoint in", False),
        (["ckpt={data}"], "no complete checkpoint in", False),
        (["ckpt={hollow_bundle}"], "export bundle without a model", False),
        (["ckpt={evil_ckpt}"], "refusing to load, it needs arbitrary unpickling", True),
        (["ckpt={notours_ckpt}"], "not an effnet checkpoint", True),
        (["ckpt={nan_run}"], "weight tensors hold nan or inf", True),
        (["ckpt={inf_run}"], "the model's outputs are not finite", True),
        (["ckpt={run}", "split=test"], "split=test: the run's split has no test images", True),
        (["ckpt={run}", "data.root={missing}"], "data.root={missing}: folder not found", False),
        (["ckpt={run}", "data.root={other_data}"], "class(es) cat, dog are not known to the model", True),
        (["ckpt={run}", "hydra.run.dir={unwritable}/eval"], "cannot create the run folder", False),
        (["ckpt={run}", "foo=1"], "unknown key 'foo'", False),
        (["ckpt={run}", "--nope"], "unknown option --nope", False),
        (["ckpt={run}", "split=${{x}}"], "split: cannot resolve", False),
        (["ckpt={run}", "split"], "missing EQUAL", False),
    ],
    "predict": [
        (["ckpt={run}"], "inputs is required", False),
        (["ckpt={run}", "inputs=null"], "inputs is required", False),
        (["inputs={data}"], "ckpt is required", False),
        (["ckpt={run}", "inputs={missing}"], "inputs={missing}: no files found", False),
        (["ckpt={run}", "inputs={empty}"], "no files found", False),
        (["ckpt={run}", "inputs={missing}/*.jpg"], "no files found", False),
        (["ckpt={run}", "inputs={junk}"], "none of the 2 files could be read as an image", True),
        (["ckpt={run}", "inputs={data}", "out={empty}"], "out={empty}: is a folder", False),
        (["ckpt={run}", "inputs={data}", "out={unwritable}/p.csv"], "cannot be written", False),
        (["ckpt={run}", "inputs={data}", "out={notes}/p.csv"], "cannot be written", False),
        (["ckpt={missing}", "inputs={data}"], "ckpt={missing}: not found", False),
        (["ckpt={hollow_bundle}", "inputs={data}"], "export bundle without a model", False),
        (["ckpt={evil_ckpt}", "inputs={data}"], "refusing to load", True),
        (["ckpt={nan_run}", "inputs={data}"], "weight tensors hold nan or inf", True),
        (["ckpt={inf_run}", "inputs={data}"], "the model's outputs are not finite", True),
        (
            ["ckpt={run}", "inputs={data}", "hydra.run.dir={unwritable}/x"],
            "cannot create the run folder",
            False,
        ),
        (["ckpt={run}", "inputs={data}", "topk=${{k}}"], "topk: cannot resolve", False),
        (["ckpt={run}", "inputs={data}", "--nope"], "unknown option --nope", False),
        (["ckpt={run}", "inputs={data}", "out"], "missing EQUAL", False),
    ],
    "export": [
        ([], "ckpt is required", False),
        (["ckpt={missing}"], "ckpt={missing}: not found", False),
        (["ckpt={garbage_ckpt}"], "truncated or not a checkpoint", False),
        (["ckpt={bundle}"], "no complete checkpoint in", False),
        (["ckpt={evil_ckpt}"], "refusing to load", True),
        (["ckpt={notours_ckpt}"], "not an effnet checkpoint", True),
        (["ckpt={nan_run}"], "weight tensors hold nan or inf", True),
        (["ckpt={inf_run}", "exporter=torchscript"], "the model's outputs are not finite", True),
        (["ckpt={run}", "out={notes}"], "out={notes}: is a file", False),
        (["ckpt={run}", "out={not_a_bundle}"], "a folder that is not an export bundle", False),
        (["ckpt={run}", "out={unwritable}/bundle"], "cannot be written", False),
        (["ckpt={run}", "quantize=int8", "format=safetensors"], "quantize=int8 needs format=onnx", False),
        (["ckpt={run}", "bench.batch_sizes=3"], "bench.batch_sizes=3: must be a list of integers", False),
        (["ckpt={run}", "bench.batch_sizes=[0]"], "bench.batch_sizes=[0]: must be a list of integers", False),
        (["ckpt={run}", "data.root={missing}"], "data.root={missing}: folder not found", False),
        (["ckpt={run}", "format=tflite"], "format=tflite: must be one of", False),
        (["ckpt={run}", "--nope"], "unknown option --nope", False),
        (["ckpt={run}", "opset=${{x}}"], "opset: cannot resolve", False),
    ],
}
SURFACE_CASES = [(command, *case) for command, cases in TRAIN_CASES.items() for case in cases]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    runner = WarmEntry(tmp_path_factory.mktemp("warm"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def warm_heavy(tmp_path_factory):
    """For the cases that must read a model to know: torch and Lightning already imported."""
    runner = WarmEntry(tmp_path_factory.mktemp("warm_heavy"), preload=("torch", "lightning", "timm"))
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def surface(tmp_path_factory, trained_run) -> dict[str, Path]:
    """What the bad inputs point at: data folders, a trained run, broken models, files of the wrong kind."""
    import torch

    base = tmp_path_factory.mktemp("surface")
    paths = {
        "missing": base / "no" / "such" / "thing",
        "unwritable": Path("/proc/effnet-cannot-write-here"),  # mkdir fails there, even for root
        "data": make_images(base / "data", {"ant": 4, "bee": 4, "wasp": 4}),
        "other_data": make_images(base / "other", {"cat": 3, "dog": 3}),
        "one_class": make_images(base / "one", {"only": 3}),
        "empty": base / "empty",
        "junk": base / "junk",
        "notes": base / "notes.txt",
        "not_a_bundle": base / "precious",
        "hollow_bundle": base / "hollow",
        "bundle": base / "bundle",
        "run": trained_run,
    }
    paths["empty"].mkdir()
    paths["junk"].mkdir()
    for name in ("a.jpg", "b.png"):
        (paths["junk"] / name).write_text("<html>not an image</html>")
    paths["notes"].write_text("not a folder, not a checkpoint, not weights\n")
    paths["not_a_bundle"].mkdir()
    (paths["not_a_bundle"] / "thesis.tex").write_text("years of work")
    for bundle_dir in (paths["hollow_bundle"], paths["bundle"]):
        bundle_dir.mkdir()
        (bundle_dir / "preprocessing.json").write_text("{}")
    (paths["bundle"] / "model.onnx").write_bytes(b"onnx")

    best = trained_run / "checkpoints" / "best.ckpt"
    paths["garbage_ckpt"] = base / "garbage.ckpt"
    paths["garbage_ckpt"].write_text("hello")
    paths["cut_ckpt"] = base / "cut.ckpt"
    paths["cut_ckpt"].write_bytes(best.read_bytes()[:50_000])
    paths["evil_ckpt"] = base / "evil.ckpt"
    torch.save({"payload": Payload()}, paths["evil_ckpt"])
    paths["notours_ckpt"] = base / "notours.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, paths["notours_ckpt"])

    def broken_run(name: str, breaks) -> Path:
        """A copy of the trained run whose best.ckpt has been broken by `breaks(state_dict)`."""
        run = base / name
        shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export", "*.lock"))
        ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
        breaks(ckpt["state_dict"])
        torch.save(ckpt, run / "checkpoints" / "best.ckpt")
        return run

    def nan_weight(state):
        state["net.backbone.conv_stem.weight"][0, 0, 0, 0] = float("nan")

    def overflowing_head(state):
        """Every weight finite, yet a logit overflows whatever the features: with the largest
        float32 in both weight and bias, row 0 overflows when the features sum above zero and
        row 1 (weight negated) when they sum below it."""
        top = torch.finfo(torch.float32).max
        weight = [k for k, v in state.items() if k.startswith("net.head") and v.dim() == 2][-1]
        bias = weight.removesuffix("weight") + "bias"
        state[weight].fill_(top)
        state[weight][1].fill_(-top)
        state[bias].fill_(top)

    paths["nan_run"] = broken_run("nan_run", nan_weight)
    paths["inf_run"] = broken_run("inf_run", overflowing_head)
    return paths


class Payload:
    """A pickled object whose unpickling would run code: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def assert_user_error(result, message: str, cwd: Path, watched: dict, heavy_allowed: bool) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert message in one_error_line(result), result.stderr
    assert list(cwd.iterdir()) == [], f"nothing may be written: {list(cwd.rglob('*'))}"
    for folder, before in watched.items():
        assert tree(folder) == before, f"{folder} changed"
    if not heavy_allowed:
        assert result.heavy == [], f"failed only after importing {result.heavy}"


@pytest.mark.parametrize(
    "command, args, message, heavy",
    SURFACE_CASES,
    ids=[f"{c}:{' '.join(a) or 'no-args'}" for c, a, _, _ in SURFACE_CASES],
)
def test_every_bad_input_of_every_command_is_one_line_and_writes_nothing(
    command, args, message, heavy, request, surface, tmp_path
):
    fill = {k: str(v) for k, v in surface.items()}
    args = [a.format(**fill) for a in args]
    watched = {surface["data"].parent: tree(surface["data"].parent), surface["run"]: tree(surface["run"])}
    runner = request.getfixturevalue("warm_heavy" if heavy else "warm")
    result = runner.run(f"{command}.py", args, cwd=tmp_path)
    assert_user_error(result, message.format(**fill), tmp_path, watched, heavy)


def _bad_value(config_name: str, base: list[str], key: str, nullable: bool) -> str | None:
    """A value the rule for `key` rejects, picked by composing the config as the command would."""
    from effnet.cli.validate import COMMAND_RULES, RULES

    rules = {r[0]: r for r in (RULES if config_name == "train" else COMMAND_RULES[config_name])}
    ok = rules[key][1]
    for candidate in ("-1", "0", "abc", "2.5", "maybe", "[0]"):
        value = OmegaConf.select(compose_cfg([*base, f"{key}={candidate}"], config_name), key)
        if value is not None and not ok(value):
            return candidate
    return None


def _rule_cases():
    from effnet.cli.validate import COMMAND_RULES, RULES

    by_command = {"train": RULES, **COMMAND_RULES}
    cases = []
    for command, rules in by_command.items():
        for key, _, _, nullable in rules:
            cases.append((command, key, "bad"))
            if not nullable:
                cases.append((command, key, "null"))
    return cases


RULE_BASE = {
    "train": ["data.root={data}"],
    "eval": ["ckpt={run}"],
    "predict": ["ckpt={run}", "inputs={data}"],
    "export": ["ckpt={run}"],
    "bench": ["data.root={data}"],
}


@pytest.mark.parametrize("command, key, kind", _rule_cases(), ids=lambda v: str(v))
def test_every_value_rule_of_every_command_is_one_line(command, key, kind, warm, surface, tmp_path):
    """Each rule of effnet.cli.validate, for each command, with a value it rejects (and null where
    a value is needed): the same contract as above, before torch is imported."""
    from effnet.cli.validate import COMMAND_RULES, RULES

    fill = {k: str(v) for k, v in surface.items()}
    base = [a.format(**fill) for a in RULE_BASE[command]]
    nullable = {r[0]: r[3] for r in (RULES if command == "train" else COMMAND_RULES[command])}[key]
    value = "null" if kind == "null" else _bad_value(command, base, key, nullable)
    assert value is not None, f"no candidate value breaks the rule for {key}"
    result = warm.run(f"{command}.py", [*base, f"{key}={value}"], cwd=tmp_path)
    assert_user_error(result, f"{key}=", tmp_path, {surface["run"]: tree(surface["run"])}, False)


def test_hydra_full_error_gives_the_traceback(warm, surface, tmp_path):
    """HYDRA_FULL_ERROR=1: the traceback, then the same line and status, found early or late."""
    for script, args in (
        ("train.py", [f"data.root={surface['missing']}"]),
        ("eval.py", [f"ckpt={surface['nan_run']}"]),
        ("train.py", ["--no-such-flag"]),
    ):
        result = warm.run(script, args, cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback (most recent call last)" in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("effnet: error: ")
