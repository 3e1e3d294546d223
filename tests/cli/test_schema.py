"""The closed config surface (effnet.cli.schema): a key nothing reads is one line naming the nearest
key, in every command and in the dry run; every key a config defines is accepted; --help lists
every key with its default and description. The key lists come from the composed configs."""

import inspect
import re
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import open_dict

from effnet.cli import schema
from effnet.errors import UserError
from tests.helpers import CONF_DIR, WarmEntry, one_error_line

COMMANDS = ("train", "eval", "predict", "export", "bench")
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    runner = WarmEntry(tmp_path_factory.mktemp("warm"))
    yield runner
    runner.close()


@pytest.fixture
def hydra_context():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def composed(command: str, overrides: list[str]):
    """The config as the Hydra callback gets it: with its `hydra` node (inside hydra_context)."""
    try:
        return compose(config_name=command, overrides=overrides, return_hydra_config=True)
    except MissingConfigException as exc:  # sweep=optuna without its Hydra sweeper installed
        if "Could not find 'hydra/" not in str(exc):
            raise
        pytest.skip(f"a Hydra plugin is not installed: {str(exc).splitlines()[0]}")


# ---------------------------------------------------------------------------------------------
# Refused: one line, exit 2, the nearest key named, nothing written, no torch

# (command, args, the message after "effnet: error: ")
UNKNOWN = [
    (
        "train",
        ["data=demo", "+callbacks.early_stopping.patience=3"],
        "+callbacks.early_stopping.patience=3: no such key; nearest: train.early_stopping.patience",
    ),
    (
        "train",
        ["data=demo", "+callbacks.early_stopping.patience=3", "dry_run=true"],
        "+callbacks.early_stopping.patience=3: no such key; nearest: train.early_stopping.patience",
    ),
    ("train", ["data=demo", "+lrr=1e-3"], "+lrr=1e-3: no such key; nearest: lr"),
    ("train", ["data=demo", "++epoch=3"], "++epoch=3: no such key; nearest: epochs"),
    ("train", ["data=demo", "+lrr=${lr}"], "+lrr=${lr}: no such key; nearest: lr"),  # as typed
    (
        "train",
        ["data=demo", "+model.pretraind=false"],
        "+model.pretraind=false: no such key; nearest: model.pretrained",
    ),
    ("train", ["data=demo", "+data.roots=x"], "+data.roots=x: no such key; nearest: data.root"),
    (
        "train",
        ["data=demo", "+trainer.devicez=2"],
        "+trainer.devicez=2: no such key; nearest: trainer.devices",
    ),
    (
        "train",
        ["data=demo", "+trainer.check_val_every_n_epochs=2"],
        "+trainer.check_val_every_n_epochs=2: no such key; nearest: trainer.check_val_every_n_epoch",
    ),
    (
        "train",
        ["data=demo", "+trainer.max_epochs=3"],
        "+trainer.max_epochs=3: effnet sets trainer.max_epochs itself from epochs; set epochs=N",
    ),
    (
        "train",
        ["data=demo", "+gpu.usable_fractoin=0.8"],
        "+gpu.usable_fractoin=0.8: no such key; nearest: gpu.usable_fraction",
    ),
    ("train", ["data=demo", "+augment.heavy.mixupp=0.2"], "no such key; nearest: augment.heavy.mixup"),
    (
        "train",
        ["data=demo", "+model.head={hidden:[8],widths:[4]}"],
        "model.head.widths: no such key; nearest:",
    ),
    (
        "train",
        ["data=demo", "+logger.mlflow.run_name=x"],
        "+logger.mlflow.run_name=x: logger.mlflow is not a logger",
    ),
    ("train", ["data=demo", "preset=small", "+data_size.rows.small.lr=1"], "nearest: data_size.lr"),
    ("train", ["-m", "data=demo", "lr=1e-3,1e-4", "+sweep.fail_fst=true"], "nearest: sweep.fail_fast"),
    ("eval", ["ckpt=/no/such/run", "+splits=test"], "+splits=test: no such key; nearest: split"),
    ("eval", ["ckpt=/no/such/run", "+data.val_fractio=0.3"], "nearest: data.val_fraction"),
    ("predict", ["ckpt=/no/such/run", "inputs=x", "+topkk=5"], "+topkk=5: no such key; nearest: topk"),
    ("export", ["ckpt=/no/such/run", "+calibration.image=9"], "nearest: calibration.images"),
    (
        "export",
        ["ckpt=/no/such/run", "+verify.rtol=1e-3"],
        "+verify.rtol=1e-3: no such key; nearest: verify.atol",
    ),
    ("bench", ["data=demo", "+bench.imagez=64"], "+bench.imagez=64: no such key; nearest: bench.images"),
    ("bench", ["data=demo", "+model.backbon=resnet18"], "nearest: model.backbone"),
]


@pytest.mark.parametrize("command, args, message", UNKNOWN, ids=[f"{c}:{' '.join(a)}" for c, a, _ in UNKNOWN])
def test_a_key_nothing_reads_is_one_line_naming_the_nearest(command, args, message, warm, tmp_path):
    result = warm.run(f"{command}.py", args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_error_line(result)
    assert message in line, line
    assert line.endswith(f"(python {command}.py --help lists every key)")
    assert list(tmp_path.iterdir()) == [], "nothing may be written (not even the demo images)"
    assert result.heavy == [], f"refused only after importing {result.heavy}"


# ---------------------------------------------------------------------------------------------
# Accepted: every key of every option of every group, and what the open sub-trees take


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_key_of_every_option_is_accepted(group, option, hydra_context):
    """The reference (the composition without the command line's additions) holds exactly the
    composed keys, whichever option is selected, so `++key=...` of any of them is accepted."""
    cfg = composed("train", [f"{group}={option}"])
    known, leaves = schema.reference_keys(cfg.hydra, schema._parse(schema.command_line(cfg.hydra)), [])
    assert known == schema.key_set(cfg)
    assert leaves == set(schema.defaults(cfg))
    assert all(schema.problem(key, known, leaves, cfg) is None for key in leaves)


@pytest.mark.parametrize("command", COMMANDS)
def test_adding_every_key_again_with_plus_plus_passes_the_callback_check(command, hydra_context):
    base = ["preset=small", "trainer=ddp", "logger=wandb"] if command in ("train", "bench") else []
    keys = [k for k in schema.defaults(composed(command, base)) if schema.settable(k)]
    cfg = composed(command, [*base, *(f"++{k}=null" for k in keys)])
    schema.check_surface(cfg, command)


ACCEPTED = [
    ["+trainer.check_val_every_n_epoch=2", "++trainer.profiler=simple", "+trainer.limit_train_batches=0.5"],
    ["+model.weights=/w.pth", "++lr=1e-3", "+model.preprocessing.mean=[0.5,0.5,0.5]"],  # + fills a null
    ["+model.head={hidden:[8]}"],  # + merges a mapping into an existing node
    ["logger=wandb", "+logger.wandb.notes=first", "+logger.wandb.settings={x:1}"],  # on to wandb.init
    ["+logger.mlflow._target_=lightning.pytorch.loggers.MLFlowLogger", "+logger.mlflow.run_name=x"],
    ["~model.freeze_epochs", "+model.freeze_epochs=2"],  # deleted and added again
    ["data_size=medium", "++data_size.lr=1e-3"],  # a named row's own keys
    ["preset=small", "++data_size.dropout=0.25"],  # the preset's row
    ["+hydra.job.env_set.X=1"],  # Hydra's own keys are Hydra's business
]


@pytest.mark.parametrize("args", ACCEPTED, ids=" ".join)
def test_what_the_config_or_an_open_sub_tree_defines_is_accepted(args, hydra_context):
    schema.check_surface(composed("train", args), "train")


def multirun(overrides: list[str]):
    """The config a multirun starts with: Hydra composes a swept group with its default option."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    cfg = GlobalHydra.instance().config_loader().load_configuration("train", overrides, RunMode.MULTIRUN)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    return cfg


def test_a_multirun_over_a_group_checks_each_option_at_the_start_and_per_job(hydra_context):
    """At the start, a key any swept option defines passes (gpu=cpu has memory_gb, auto has not);
    each job then checks its own composition (train_task), so gpu=auto's job refuses it."""
    schema.check_surface(multirun(["gpu=auto,cpu", "+gpu.memory_gb=8"]), "train")
    with pytest.raises(UserError, match=r"\+gpu.tierz=1: no such key"):
        schema.check_surface(multirun(["gpu=auto,cpu", "+gpu.tierz=1"]), "train")
    job = multirun(["gpu=auto", "+gpu.memory_gb=8"])
    with pytest.raises(UserError, match=r"\+gpu.memory_gb=8: no such key"):
        schema.check_surface(job, "train")
    schema.check_surface(multirun(["gpu=cpu", "+gpu.memory_gb=8"]), "train")


def test_the_trainer_arguments_are_lightnings():
    """TRAINER_ARGS stands in for lightning.Trainer's signature, which needs torch to read."""
    from lightning import Trainer

    assert set(schema.TRAINER_ARGS) == set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    assert set(schema.EFFNET_TRAINER) <= set(schema.TRAINER_ARGS)


def test_hydras_unknown_key_line_suggests_plus_only_where_something_reads_it(warm, tmp_path):
    lrr = one_error_line(warm.run("train.py", ["data=demo", "lrr=1"], cwd=tmp_path))
    assert lrr == "unknown key 'lrr' (did you mean lr?)"
    check_val = one_error_line(
        warm.run("train.py", ["data=demo", "trainer.check_val_every_n_epoch=2"], cwd=tmp_path)
    )
    assert check_val.endswith("to pass it to lightning.Trainer write +trainer.check_val_every_n_epoch=2")


# ---------------------------------------------------------------------------------------------
# --help: every key with its default and a description


def help_rows(text: str) -> dict[str, str]:
    """`key=default` -> description, from the option lines of --help."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"  (\S+=\S*)(?:\s+(.*))?", line)
        if match:
            rows[match[1]] = match[2] or ""
    return rows


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_every_key_with_its_default_and_a_description(command, warm, tmp_path, hydra_context):
    started = time.perf_counter()
    result = warm.run(f"{command}.py", ["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert time.perf_counter() - started < 5
    assert result.heavy == []
    assert list(tmp_path.iterdir()) == []
    rows = help_rows(result.stdout)
    keys = schema.defaults(composed(command, []))
    for key, value in keys.items():
        item = f"{key}={schema.show(value)}"
        assert item in rows, f"{item} is not in {command}.py --help"
        assert rows[item], f"{key} has no description"
    if command in ("train", "bench"):
        assert "dry_run=false" in rows
        assert "trainer.<argument>=VALUE" in rows and "logger.<name>.<key>=VALUE" in rows
    assert len(rows) == len(keys) + (2 if command in ("train", "bench") else 0)


def test_help_follows_the_options_chosen_on_the_command_line(warm, tmp_path):
    rows = help_rows(
        warm.run("train.py", ["trainer=ddp", "data=demo", "logger=wandb", "--help"], cwd=tmp_path).stdout
    )
    assert rows["trainer.strategy=ddp"] == "one process per device"
    assert rows["data.root=outputs/demo_data"] == "written on first use"
    assert rows["logger.wandb.project=effnet"] == "the W&B project"


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_key_of_every_option_has_a_description(group, option, hydra_context):
    texts = schema.described(composed("train", [f"{group}={option}"]))
    assert [k for k, text in texts.items() if not text] == []


# ---------------------------------------------------------------------------------------------
# The pieces

YAML = """\
# A file's header is no description.
name: x             # the name
nested:
  # A block right above a key describes it. Only its first sentence.
  inner: 1
  other: "a # b"    # quoted # is no comment
  long: 2           # first line,
                    # second line
deep:               # a node
  leaf: [1, 2]

after: 3
"""


def test_comments_are_read_from_the_lines_and_the_block_above():
    assert schema.comments(YAML) == {
        "name": "the name",
        "nested.inner": "A block right above a key describes it.",
        "nested.other": "quoted # is no comment",
        "nested.long": "first line, second line",
        "deep": "a node",
    }


def test_nearest_prefers_the_whole_key_then_its_last_part():
    known = ["lr", "model.pretrained", "divergence.patience", "train.early_stopping.patience", "data.root"]
    assert schema.nearest("model.pretraind", known)[0] == "model.pretrained"
    assert schema.nearest("callbacks.early_stopping.patience", known) == ["train.early_stopping.patience"]
    assert schema.nearest("callbacks.wait.patience", known) == [
        "divergence.patience",
        "train.early_stopping.patience",
    ]
    assert len(schema.nearest("zzz", known)) == 1


def test_show_writes_values_as_the_command_line_takes_them():
    assert [schema.show(v) for v in (None, True, [0.5, 1], "auto", 3)] == [
        "null",
        "true",
        "[0.5,1]",
        "auto",
        "3",
    ]
