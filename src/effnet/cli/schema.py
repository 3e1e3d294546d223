"""The config surface: which keys a command takes, what each means, and its --help, from one source.

The keys a command takes are the keys its composed config defines: the primary config (train.yaml,
eval.yaml, ...) and the option of every group the command line (or a preset) selects, each file
placed at its package. A key added with `+key=value` or `++key=value` must be one of them (`+` may
fill a key whose value is null, `++` may set any): anything else is a key nothing reads, refused in
one line naming the nearest key. The reference is the same composition without those additions,
so a key that only one option of a group defines (a preset's, a data option's) is valid when that
option is selected, and a key added to conf/*.yaml is valid the moment it is there. Hydra's own
keys (`hydra.*`, `hydra/...`) are Hydra's business.

Two sub-trees are passed on to libraries and stay open:

- `trainer.<argument>`: the `trainer:` keys go to lightning.Trainer as they are, so any of its
  arguments may be added (TRAINER_ARGS, checked without importing Lightning; effnet.plan checks the
  installed Lightning again before training) except those effnet sets itself (EFFNET_TRAINER).
- `logger.<name>.<key>`: each logger node is instantiated as it is (hydra.utils.instantiate), and
  TensorBoardLogger and WandbLogger pass unknown keyword arguments on to SummaryWriter and
  wandb.init, whose arguments depend on the versions installed; a new logger needs a `_target_`.

The descriptions --help prints are the YAML comments: the comment on a key's own line (and the
comment lines aligned under it), else the first sentence of the comment block right above it (not
a file's header). A later file of the composition describes a key again only where it has a comment.
Imports no torch: this runs in the Hydra callback and in --help.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from effnet.errors import UserError

# lightning.Trainer.__init__'s arguments (Lightning 2.6; tests/cli/test_schema.py compares them with
# the installed version's signature).
TRAINER_ARGS = (
    "accelerator",
    "strategy",
    "devices",
    "num_nodes",
    "precision",
    "logger",
    "callbacks",
    "fast_dev_run",
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "max_time",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "limit_predict_batches",
    "overfit_batches",
    "val_check_interval",
    "check_val_every_n_epoch",
    "num_sanity_val_steps",
    "log_every_n_steps",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "deterministic",
    "benchmark",
    "inference_mode",
    "use_distributed_sampler",
    "profiler",
    "detect_anomaly",
    "barebones",
    "plugins",
    "sync_batchnorm",
    "reload_dataloaders_every_n_epochs",
    "default_root_dir",
    "enable_autolog_hparams",
    "model_registry",
)
# Trainer arguments effnet passes itself (effnet.training.train): one given as trainer.<name> would be
# replaced, or passed twice.
EFFNET_TRAINER = {
    "max_epochs": "from epochs; set epochs=N",
    "accumulate_grad_batches": "from batch_size and the gpu tier's micro-batch; set batch_size=N",
    "callbacks": "(checkpoints, progress, dashboards)",
    "logger": "from the logger group; choose logger=csv|tensorboard|wandb or add +logger.<name>._target_=...",
    "plugins": "(atomic checkpoint writes)",
    "default_root_dir": "to the run folder; set hydra.run.dir=FOLDER",
}

# Open sub-trees (see the module docstring) and the line --help shows for each.
OPEN = {
    "trainer": (
        "trainer.<argument>=VALUE",
        "any other lightning.Trainer argument, added with +, e.g. +trainer.check_val_every_n_epoch=2",
    ),
    "logger": (
        "logger.<name>.<key>=VALUE",
        "passed to that logger's class (W&B: on to wandb.init), added with +, e.g. +logger.wandb.notes=first",
    ),
}


# ---------------------------------------------------------------------------------------------
# Keys


def flat(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain container, skipping `hydra`: dicts are walked,
    lists and empty dicts are leaves."""
    for key, value in node.items():
        if not prefix and key == "hydra":
            continue
        if isinstance(value, dict) and value:
            yield from flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def container(cfg: DictConfig) -> dict:
    """The config as plain dicts, unresolved (`${...}` as written, `???` for a required value)."""
    return OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)


def defaults(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf key of a composed config (not `hydra.*`) and its value, in the config's order."""
    return dict(flat(container(cfg)))


def key_set(cfg: DictConfig) -> set[str]:
    """Every key of a composed config, leaves and the nodes above them (not `hydra.*`)."""
    keys = set()
    for leaf in defaults(cfg):
        parts = leaf.split(".")
        keys.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return keys


def settable(key: str) -> bool:
    """Whether the command line can name `key`: Hydra's override grammar has no key part that
    starts with a digit (gpu.tiers.8gb.memory_gb is set in conf/gpu/8gb.yaml, not on the line)."""
    return not any(part[:1].isdigit() for part in key.split("."))


def nearest(key: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known keys closest to `key`: by the whole dotted key, else by its last part
    (+callbacks.wait.patience: divergence.patience, train.early_stopping.patience), else the closest at all."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    if not close:
        by_leaf: dict[str, list[str]] = {}
        for k in known:
            by_leaf.setdefault(k.rpartition(".")[2], []).append(k)
        leaf = key.rpartition(".")[2]
        close = [k for name in difflib.get_close_matches(leaf, by_leaf, n=n) for k in by_leaf[name]][:n]
    return close or difflib.get_close_matches(key, known, n=1, cutoff=0)


def _trainer_args() -> list[str]:
    return [a for a in TRAINER_ARGS if a not in EFFNET_TRAINER]


def open_hint(key: str) -> str | None:
    """How to add `key` when an open sub-tree takes it (for Hydra's "unknown key" line), else None."""
    parts = key.split(".")
    if parts[0] == "trainer" and len(parts) > 1 and parts[1] in _trainer_args():
        return "to pass it to lightning.Trainer write +"
    if parts[0] == "logger" and len(parts) > 2:
        return "to pass it to the logger write +"
    return None


def problem(key: str, known: set[str], leaves: set[str], cfg: DictConfig) -> str | None:
    """Why the composed config `cfg` may not have `key` (dotted), given the `known` keys (`leaves`:
    those that hold a value) of its composition without the command line's additions; None when
    it may."""
    if key in known:
        return None
    parts = key.split(".")
    candidates = {k for k in leaves if settable(k)}
    if parts[0] == "trainer" and "trainer" in known:
        if len(parts) > 1 and parts[1] in EFFNET_TRAINER:
            return f"effnet sets trainer.{parts[1]} itself {EFFNET_TRAINER[parts[1]]}"
        if len(parts) > 1 and parts[1] in TRAINER_ARGS:
            return None
        candidates.update(f"trainer.{a}" for a in _trainer_args())
    if parts[0] == "logger" and "logger" in known and len(parts) > 1:
        name = ".".join(parts[:2])
        if name not in known and OmegaConf.select(cfg, f"{name}._target_", default=None) is None:
            loggers = sorted(k.split(".")[1] for k in known if k.count(".") == 1 and k.startswith("logger."))
            return (
                f"{name} is not a logger of this run (it has {', '.join(loggers) or 'none'}); "
                f"a new one needs its class, e.g. +{name}._target_=lightning.pytorch.loggers.MLFlowLogger"
            )
        return None
    return f"no such key; nearest: {', '.join(nearest(key, candidates))}"


# ---------------------------------------------------------------------------------------------
# The check: every key the command line adds is one the composition defines


def command_line(hydra: DictConfig) -> list[str]:
    """The overrides as typed (hydra.overrides.task), a `${...}` in them not resolved."""
    return OmegaConf.to_container(hydra.overrides.task, resolve=False)


def _parse(overrides: Iterable[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def _is_group(override, choices: Iterable[str]) -> bool:
    """A defaults-list override (model=b3, +hydra/launcher=..., x@pkg=...), not a config value."""
    key = override.key_or_group
    value = None if override.is_sweep_override() else override.value()
    if isinstance(value, dict):
        return False  # group={...} merges a value, as Hydra reads it
    return override.package is not None or "/" in key or key in choices


def _written(override) -> list[str]:
    """The dotted keys an addition writes: its key, and the keys of a mapping it merges there."""
    key = override.key_or_group
    value = None if override.is_sweep_override() else override.value()
    if isinstance(value, dict) and value:
        return [key, *(f"{key}.{k}" for k, _ in flat(value))]
    return [key]


@contextlib.contextmanager
def _loader(hydra: DictConfig) -> Iterator:
    """The config loader of the running Hydra app, or outside one a loader for the config's own
    folder for the time of the `with`; `hydra`: the config's `hydra` node."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().config_loader()
        return
    main = next(s.path for s in hydra.runtime.config_sources if s.provider == "main")
    with initialize_config_dir(config_dir=str(main), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def reference_keys(hydra: DictConfig, overrides: list, dropped: list) -> tuple[set[str], set[str]]:
    """(every key, the leaf keys) of the composition that `hydra` (a config's `hydra` node, with
    the parsed `overrides` of its command line) describes, without the `dropped` overrides.
    In a multirun, the union over each swept group's options (Hydra composes the sweep with the
    group's default)."""
    from hydra.types import RunMode

    mode = RunMode.MULTIRUN if hydra.mode == RunMode.MULTIRUN else RunMode.RUN
    name = hydra.job.config_name
    choices = set(hydra.runtime.choices)
    kept = [o for o in overrides if not any(o is d for d in dropped)]
    lines = [o.input_line for o in kept]
    variants = [lines]
    for i, o in enumerate(kept):
        if mode == RunMode.MULTIRUN and o.is_sweep_override() and _is_group(o, choices):
            try:
                options = list(o.sweep_string_iterator())
            except Exception:  # glob(...) and other sweeps that are not a plain list
                continue
            variants += [[*lines[:i], f"{o.get_key_element()}={c}", *lines[i + 1 :]] for c in options]
    keys: set[str] = set()
    leaves: set[str] = set()
    with _loader(hydra) as loader:
        for variant in variants:
            composed = loader.load_configuration(name, variant, run_mode=mode)
            keys |= key_set(composed)
            leaves |= set(defaults(composed))
    return keys, leaves


def check_surface(config: DictConfig, command: str, hydra: DictConfig | None = None) -> None:
    """UserError for a key the command line adds (`+`/`++`) that the composed config does not
    define and no open sub-tree takes. `config`: the composed config with its `hydra` node, as
    the Hydra callback gets it, or a job's config and its `hydra` (HydraConfig.get()). Composes
    once more (about 0.2 s), only when something is added.

    A multirun is checked at its start against the union over the options of each swept group,
    and then per job (app.train_task) against that job's own composition."""
    hydra = hydra if hydra is not None else config.get("hydra")
    task = [] if hydra is None else command_line(hydra)
    if not any(o.startswith("+") for o in task):
        return  # nothing added: nothing to check (and no override parsed)
    overrides = _parse(task)
    choices = set(hydra.runtime.choices)
    added = [
        o
        for o in overrides
        if (o.is_add() or o.is_force_add()) and not o.is_hydra_override() and not _is_group(o, choices)
    ]
    if not added:
        return
    deleted = [
        o for o in overrides if o.is_delete() and not o.is_hydra_override() and not _is_group(o, choices)
    ]
    known, leaves = reference_keys(hydra, overrides, added + deleted)
    for override in added:
        for key in _written(override):
            why = problem(key, known, leaves, config)
            if why:
                which = "" if key == override.key_or_group else f"{key}: "
                raise UserError(
                    f"{override.input_line}: {which}{why} (python {command}.py --help lists every key)"
                )


# ---------------------------------------------------------------------------------------------
# Descriptions: the YAML comments

_KEY = re.compile(r"(?P<indent> *)(?P<key>[A-Za-z_][\w-]*)\s*:(?:\s+(?P<rest>.*)|$)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _split_comment(rest: str) -> tuple[str, int | None]:
    """(the comment after a value, its offset in `rest`) or ("", None); a # inside quotes is no comment."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1 :].strip(), i
    return "", None


def comments(text: str) -> dict[str, str]:
    """Dotted key (within the file) -> its description, from a YAML file's comments."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    block_is_header = False
    last: tuple[str, int] | None = None  # the key with a same-line comment, and the comment's column
    for number, line in enumerate(text.splitlines()):
        stripped = line.strip()
        if not stripped:
            block, last = [], None
            continue
        if stripped.startswith("#"):
            column = len(line) - len(line.lstrip())
            if last and column == last[1]:
                out[last[0]] += " " + stripped.lstrip("#").strip()
                continue
            if not block:
                block_is_header = number == 0
            block.append(stripped.lstrip("#").strip())
            last = None
            continue
        match = _KEY.fullmatch(line)
        if not match:  # a list item, a flow mapping's continuation
            block, last = [], None
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(k for _, k in stack)
        rest = match["rest"] or ""
        comment, offset = _split_comment(rest)
        last = None
        if comment:
            out[path] = comment
            last = (path, len(line) - len(rest) + offset)
        elif block and not block_is_header:
            out[path] = _SENTENCE_END.split(" ".join(block), maxsplit=1)[0]
        block = []
    return out


def descriptions(files: Iterable[tuple[Path, str]]) -> dict[str, str]:
    """Dotted key -> description over the files of a composition, (path, package) in merge order."""
    out: dict[str, str] = {}
    for path, package in files:
        for key, text in comments(path.read_text()).items():
            out[f"{package}.{key}" if package else key] = text
    return out


def composition_files(config: DictConfig) -> list[tuple[Path, str]]:
    """(YAML file, package) of every config of the app that makes up `config`, in merge order."""
    from hydra.types import RunMode

    with _loader(config.hydra) as loader:
        folders = [Path(s.path) for s in loader.get_sources() if s.scheme() == "file"]
        name, overrides = config.hydra.job.config_name, command_line(config.hydra)
        items = loader.compute_defaults_list(name, overrides, RunMode.RUN).defaults
    files = []
    for item in items:
        package = item.package or ""
        if item.config_path is None or package == "hydra" or package.startswith("hydra."):
            continue
        found = [
            f / f"{item.config_path}.yaml" for f in folders if (f / f"{item.config_path}.yaml").is_file()
        ]
        if found:
            files.append((found[0], package))
    return files


# ---------------------------------------------------------------------------------------------
# --help


def show(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _sibling(key: str, described: dict[str, str]) -> str:
    """The description of the same key in a sibling node (augment.heavy.hflip: augment.light.hflip's),
    for entries written once for several: below the first level only, so gpu.name is not
    optimizer.name."""
    parts = key.split(".")
    for other, text in described.items():
        theirs = other.split(".")
        if (
            len(theirs) == len(parts) > 2
            and (theirs[0], theirs[-1]) == (parts[0], parts[-1])
            and sum(a != b for a, b in zip(parts, theirs, strict=True)) == 1
        ):
            return text
    return ""


def described(config: DictConfig) -> dict[str, str]:
    """Every leaf key of a composed config (with its `hydra` node) -> its description ("" if none)."""
    texts = descriptions(composition_files(config))
    return {key: texts.get(key) or _sibling(key, texts) for key in defaults(config)}


def options(config: DictConfig, width: int = 38) -> str:
    """One line per key: `key=default  description`, then the open sub-trees."""
    texts = described(config)
    rows = []
    for key, value in defaults(config).items():
        text = texts[key]
        if value == "???":
            text = f"(required) {text}".strip()
        rows.append((f"{key}={show(value)}", text))
    rows += [OPEN[node] for node in OPEN if node in config and node != "hydra"]
    pad = min(width, max(len(item) for item, _ in rows))
    return "\n".join(f"  {item:<{pad}}  {text}".rstrip() for item, text in rows)


def options_resolver(*, _root_: DictConfig) -> str:
    """${effnet_options:} in conf/hydra/help/*.yaml: the options of the config --help composed.
    `$` doubled: Hydra substitutes $APP_CONFIG_GROUPS and the like in the text afterwards.

    OmegaConf also evaluates the template while Hydra composes any config (merging hydra/config
    over hydra/help), before the app's own configs are merged: then there is nothing to list,
    and nothing is read."""
    if not set(_root_) - {"hydra"}:
        return ""
    return options(_root_).replace("$", "$$")
