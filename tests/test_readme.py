"""README.md and docs/*.md, executed (issues 17, 18): every shell command in their code blocks runs
here, small.

Found at test time: markdown-it-py parses README.md and every docs/*.md page (PAGES); every
```bash/```sh/```shell block and every
unlabelled ``` block holds commands (```text blocks show output and are left alone). A trailing `\\`
joins the next line; `#` starts a comment, so comment lines (`#!`, `#SBATCH` too) are not commands.

Marked: a command that cannot run here carries an HTML comment just above its code block, with
the reason (invisible on GitHub):

    <!-- not run by the suite: REASON -->                   every command of the block
    <!-- not run by the suite: `make test`: REASON -->      the block's commands starting `make test`

Marked commands are collected as skipped tests with that reason (`pytest -ra` lists them). A
command that an earlier page (README.md first, then docs/ by name) already runs, word for word, is
collected as skipped too, naming where it runs: it runs once.

Run: every other command by the first rule of RULES whose pattern it matches, in a fresh copy of
the checkout (every page's commands run from the repository root), with PLACEHOLDERS replaced and the
rule's small settings added (in place of the command's own value of a key it sets: the scripts
refuse a key given twice). Python commands run in a fork of one interpreter that has imported
torch, Lightning and timm once (tests/helpers.WarmEntry): each is still its own process, with
its real entry script and argv. A command that no rule matches, or that a rule says must be
marked, fails and says what to add.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tests.helpers import BENCH_TINY, ROOT, SMALL, WarmEntry, make_images

# ================================================================================================
# The table: how a command of README.md or docs/*.md runs here. Everything that makes a command
# small, and why, is here and nowhere else. A new command either matches a rule or carries a marker.
# ================================================================================================

RUN = "2026-01-05_09-12-44_a1b2c3"  # the shared run's folder in outputs/train/
SWEEP = "2026-01-05_09-12-44"  # the shared sweep's folder in outputs/multirun/

# Text in a page's command -> what it is here (longest first). {photos}: the small labelled data
# set conftest.trained_run was trained on (3 classes, train/ + val/, 42 images of 40 px), so the
# shared run can be resumed on it; {new}: 3 unlabelled images; {venv}: the bin/ folder of the
# interpreter running the suite (make installs .venv; the suite runs in one already).
PLACEHOLDERS = {
    "~/photos/new": "{new}",
    "~/photos": "{photos}",
    "/data/photos": "{photos}",
    "<folder>": "{photos}",
    "outputs/train/<run>": f"outputs/train/{RUN}",  # setup "run": a copy of conftest.trained_run
    "outputs/multirun/<timestamp>": f"outputs/multirun/{SWEEP}",  # setup "sweep": a 2-job sweep
    ".venv/bin/": "{venv}/",
}

SMALL_ANY_MODEL = tuple(o for o in SMALL if not o.startswith("model="))
# A plan instead of a run: what a command that needs GPUs would do with them, without them.
DRY_RUN = ("dry_run=true", "trainer.accelerator=cpu")
# The legacy exporter (the default, dynamo, takes ~20 s more for this tiny model; conftest's
# onnx_bundle uses the legacy one too), no latency benchmark (~15 s), 12 calibration images.
EXPORT_SMALL = ("exporter=torchscript", "bench.enabled=false", "calibration.images=12", "num_workers=0")
# tests/bench/test_task.py's tiny bench, one round (docs/speed.md shows bench.rounds=3 for a comparison)
BENCH_SMALL = (*BENCH_TINY, "dashboards.samples=0", "bench.rounds=1")


@dataclass(frozen=True)
class Rule:
    pattern: str  # re.search in the page's command: one line, comments dropped, placeholders as written
    how: str  # python: in the warm interpreter | make: its recipe | shell | mark: its page must mark it
    expect: str = "finished"  # the check below that says what the command must have done
    add: tuple[str, ...] = ()  # key=value settings: replace the command's value of the key, else appended
    # run: outputs/train/<run>; bundle: <run>/export/onnx; sweep: outputs/multirun/<timestamp>
    setup: tuple[str, ...] = ()
    jobs: int | None = None  # a sweep's jobs; None: as many as the command's comma lists make
    why: str = ""  # why this form; for `mark`, the reason its marker should give


# The first rule whose pattern a command matches says how it runs. The `mark` rows run nothing:
# they name commands a page must mark (make lock and optuna-dashboard ahead of their lines).
# fmt: off
RULES = (
    Rule(r"^make test\b", "mark", why="it is the test suite itself"),
    Rule(r"^make lock\b", "mark", why="needs the network (pip resolves every dependency afresh) and rewrites requirements.lock"),
    Rule(r"^make clean\b", "mark", why="it deletes .venv, the interpreter the suite runs in, and every run in outputs/"),
    Rule(r"^make \w+$", "make", "unchanged",
         why="the recipe `make -n` prints (the venv counts as installed: installing needs the network), each "
             "line run by this table, in the copy; `make format` may rewrite only the copy, and must not"),
    Rule(r"^optuna-dashboard\b", "mark", why="a long-lived web server"),
    Rule(r"^(\w+=\S+ )*docker\b", "mark", why="needs a Docker engine (none on the CI machines)"),
    Rule(r"^(\w+=\S+ )*(torchrun|srun|sbatch)\b", "mark", why="needs GPUs, several machines or a SLURM cluster"),
    Rule(r"hydra/launcher=slurm", "mark", why="needs a SLURM cluster"),
    Rule(r"train\.py (?=.* -m( |$))(?=.* trainer=ddp( |$))", "mark",
         why="a DDP sweep (a fresh process per job and rank: ~30 s a job); tests/training/test_launch.py runs one"),
    Rule(r"\.py( .*)? --(help|cfg|info)\b", "python", "printed", why="as written: it prints and exits"),
    Rule(r"^ruff |/ruff ", "shell", why="make lint's and make format's lines, as written"),
    Rule(r"^effnet-train\b", "python", "trained", add=SMALL,
         why="the console script as pip writes it from pyproject.toml's [project.scripts], small"),
    Rule(r"train\.py .*ckpt_path=last", "python", "resumed", add=(*SMALL, "epochs=3"), setup=("run",),
         why="resumes a copy of the shared 2-epoch run (its data, model and size) for a third epoch"),
    Rule(r"train\.py .*lr=find", "python", "found",
         add=(*SMALL, "trainer.limit_train_batches=null", "epochs=2", "lr_find.max_lr=0.01"),
         why="the finder over a small run's own 14 steps (2 epochs of 7 batches; the 13 a suggestion needs), "
             "below the lr where the loss diverges, so every step runs"),
    Rule(r"train\.py .*show_batch=true", "python", "previewed", add=(*SMALL, "dashboards.train_batch=16"),
         why="the dry run's first batch of the small run, drawn to outputs/batches/"),
    Rule(r"train\.py .*trainer=ddp", "python", "planned", add=DRY_RUN,
         why="needs several GPUs: the dry run resolves the plan for them (devices, batch split, strategy) "
             "on the CPU and prints it"),
    Rule(r"train\.py .*sweep=grid", "python", "swept", add=SMALL_ANY_MODEL, jobs=8,
         why="all 8 jobs of src/effnet/conf/sweep/grid.yaml, small (model is one of its knobs)"),
    Rule(r"train\.py .*sweep=optuna", "python", "swept", add=(*SMALL, "hydra.sweeper.n_trials=1"), jobs=1,
         why="the search with one small trial (model and batch size fixed, a syntax the docs show)"),
    Rule(r"train\.py .*-m\b", "python", "swept", add=SMALL, why="every job of the sweep, small"),
    Rule(r"train\.py", "python", "trained", add=SMALL, why="a real run, small"),
    Rule(r"eval\.py", "python", "evaluated", add=("num_workers=0",), setup=("run",), why="of the shared run"),
    Rule(r"export\.py", "python", "exported", add=EXPORT_SMALL, setup=("run",), why="of the shared run, small"),
    Rule(r"predict\.py", "python", "predicted", add=("num_workers=0",), setup=("run", "bundle"),
         why="with conftest.onnx_bundle (the shared run's int8 bundle) where export.py puts it"),
    Rule(r"bench\.py", "python", "benched", add=BENCH_SMALL, why="tests/bench/test_task.py's tiny bench"),
    Rule(r"-m effnet\.report\b", "python", "reported", setup=("sweep",), why="of a 2-job sweep of small runs"),
)
# fmt: on

# Modules the warm interpreter imports once; each command then runs in a fork of it.
PRELOAD = (
    "torch",
    "lightning",
    "timm",
    "effnet.training.train",
    "matplotlib.pyplot",
    "effnet.deploy.export",
    "optuna",
)

# ================================================================================================
# Checks: what a command must have done.
# ================================================================================================


@dataclass(frozen=True)
class Outcome:
    """A finished command: what the checks read."""

    words: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str
    rule: Rule

    def ok(self) -> None:
        assert self.returncode == 0, (
            f"{shlex.join(self.words)}\nexit {self.returncode}\n{self.stderr[-3000:]}"
        )


def finished(out: Outcome) -> None:
    out.ok()


def printed(out: Outcome) -> None:
    out.ok()
    assert out.stdout.strip() and not (out.cwd / "outputs" / "train").exists()


def trained(out: Outcome) -> None:
    out.ok()
    (run,) = (out.cwd / "outputs" / "train").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] >= 1 and (run / "checkpoints" / "best.ckpt").is_file()


def resumed(out: Outcome) -> None:
    out.ok()
    assert [p.name for p in (out.cwd / "outputs" / "train").iterdir()] == [RUN]  # no new run folder
    summary = json.loads((out.cwd / "outputs" / "train" / RUN / "summary.json").read_text())
    assert summary["resumed_from"] and summary["epochs_completed"] == 3


def planned(out: Outcome) -> None:
    out.ok()
    assert "effnet run plan (dry run" in out.stdout and "start it" in out.stdout
    assert not (out.cwd / "outputs" / "train").exists()


def found(out: Outcome) -> None:
    out.ok()
    (run,) = (out.cwd / "outputs" / "train").iterdir()
    record = json.loads((run / "lr_find.json").read_text())
    assert (run / "lr_find.png").is_file() and not (run / "checkpoints").exists()
    (command,) = [line for line in out.stdout.splitlines() if line.startswith("train with it: ")]
    assert f" lr={record['suggestion']:.2g} " in f"{command} " and "lr=find" not in command, command


def previewed(out: Outcome) -> None:
    out.ok()
    (picture,) = (out.cwd / "outputs" / "batches").glob("*/train_batches.png")
    assert f": outputs/batches/{picture.parent.name}/train_batches.png" in out.stdout
    assert "effnet run plan (dry run" in out.stdout and not (out.cwd / "outputs" / "train").exists()


def swept(out: Outcome) -> None:
    out.ok()
    jobs = out.rule.jobs or math.prod(
        len(value.split(","))
        for word in out.words
        if "=" in word and not word.startswith("hydra.")
        for value in [word.split("=", 1)[1]]
        if not value.startswith(("[", "(", "{")) and "(" not in value
    )
    (sweep,) = (out.cwd / "outputs" / "multirun").iterdir()
    done = sorted((p.parent.name for p in sweep.glob("*/summary.json")), key=int)
    assert done == [str(i) for i in range(jobs)], (done, out.stderr[-2000:])


def evaluated(out: Outcome) -> None:
    out.ok()
    (result,) = (out.cwd / "outputs" / "eval").glob("*/eval.json")
    assert 0 <= json.loads(result.read_text())["top1"] <= 1


def exported(out: Outcome) -> None:
    out.ok()
    bundle = out.cwd / "outputs" / "train" / RUN / "export" / "onnx"  # where docs/deploy.md says it goes
    files = {"model.onnx", "labels.json", "preprocessing.json", "model_card.md", "export.json"}
    if "quantize=int8" in out.words:
        files.add("model.int8.onnx")
    assert files <= {p.name for p in bundle.iterdir()}
    assert {p.name for p in (bundle / "timm").iterdir()} == {"model.safetensors", "config.json"}


def predicted(out: Outcome) -> None:
    out.ok()
    (target,) = [w.split("=", 1)[1] for w in out.words if w.startswith("out=")]
    (inputs,) = [Path(w.split("=", 1)[1]) for w in out.words if w.startswith("inputs=")]
    with open(out.cwd / target) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(inputs.iterdir())) and all(row["label1"] for row in rows)


def benched(out: Outcome) -> None:
    out.ok()
    (result,) = (out.cwd / "outputs" / "bench").glob("*/bench.json")
    assert json.loads(result.read_text()) and "bottleneck: " in out.stdout


def reported(out: Outcome) -> None:
    out.ok()
    sweep = out.cwd / "outputs" / "multirun" / SWEEP
    assert all((sweep / name).is_file() for name in ("report.md", "report.csv", "report.png"))
    assert "★" in out.stdout


def unchanged(out: Outcome) -> None:
    """A make target, run in the copy: the checkout's files are as they were (format found nothing)."""
    out.ok()
    changed = [n for n in checkout_files() if (ROOT / n).read_bytes() != (out.cwd / n).read_bytes()]
    assert not changed, f"{shlex.join(out.words)} changed {changed}"


CHECKS = {f.__name__: f for f in (finished, printed, trained, resumed, planned, found, previewed, swept, evaluated,
                                   exported, predicted, benched, reported, unchanged)}  # fmt: skip

# ================================================================================================
# Extraction: README.md and docs/*.md -> commands and markers.
# ================================================================================================

README = ROOT / "README.md"


def pages() -> list[Path]:
    """The pages whose commands run: README.md, then docs/*.md by name."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


SHELL_INFOS = {"", "bash", "sh", "shell", "console", "zsh"}
MARKER = re.compile(r"<!--\s*not run by the suite:\s*(?:`([^`]+)`\s*:\s*)?(.*?)\s*-->", re.DOTALL)


@dataclass(frozen=True)
class Command:
    line: int  # the page's line (1-based) where the command starts
    words: tuple[str, ...]  # as the shell splits it, comments dropped
    skip: str | None = None  # the Markdown's reason, when marked
    page: str = "README.md"  # the file, relative to the repository root

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class Readme:
    commands: list[Command] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # markers that mark nothing, unclosed quotes


def normal(text: str) -> str:
    return " ".join(text.split())


def block_commands(
    content: str, first_line: int, problems: list[str], page: str = "README.md"
) -> list[Command]:
    """The commands of one code block whose first content line is line `first_line` of `page`."""
    commands, lines, i = [], content.splitlines(), 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        try:
            words = shlex.split(text, comments=True)
        except ValueError as exc:  # an unclosed quote
            problems.append(f"{page}:{first_line + start}: {exc}: {text}")
            continue
        if words:
            commands.append(Command(first_line + start, tuple(words), page=page))
    return commands


def parse_readme(markdown: str, page: str = "README.md") -> Readme:
    """The commands of every shell code block of `page` (README.md or a docs/*.md page, named as
    its path from the repository root), with the reasons of the markers just above them."""
    out, pending = Readme(), []
    for token in MarkdownIt().parse(markdown):
        if token.type == "html_block" and MARKER.search(token.content):
            line = token.map[0] + 1
            pending += [(line, normal(prefix), normal(why)) for prefix, why in MARKER.findall(token.content)]
            continue
        if token.type == "fence" and token.info.strip().split(" ")[0] in SHELL_INFOS:
            commands = block_commands(token.content, token.map[0] + 2, out.problems, page)
            for line, prefix, why in pending:  # prefix "": the whole block
                hits = [i for i, c in enumerate(commands) if c.text.startswith(prefix)]
                if not hits:
                    out.problems.append(f"{page}:{line}: the marker for `{prefix}` marks no command below it")
                for i in hits:
                    commands[i] = Command(commands[i].line, commands[i].words, why, page)
            out.commands += commands
        else:  # any other block between a marker and its code block
            out.problems += [
                f"{page}:{line}: a marker not just above a shell code block" for line, *_ in pending
            ]
        pending = []
    out.problems += [f"{page}:{line}: a marker not just above a shell code block" for line, *_ in pending]
    return out


def rule_for(text: str) -> Rule | None:
    return next((rule for rule in RULES if re.search(rule.pattern, text)), None)


def marker_for(command: Command, reason: str) -> str:
    prefix = " ".join(command.words[:2])
    return f"<!-- not run by the suite: `{prefix}`: {reason} -->"


# ================================================================================================
# Running a command.
# ================================================================================================


@cache
def checkout_files() -> tuple[str, ...]:
    """The checkout as git sees it: tracked files and new ones it does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return tuple(name for name in listed if name and (ROOT / name).is_file())


def copy_checkout(dest: Path) -> Path:
    for name in checkout_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


def substitute(text: str, values: dict[str, str]) -> str:
    for placeholder in sorted(PLACEHOLDERS, key=len, reverse=True):
        if placeholder in text:
            text = text.replace(placeholder, PLACEHOLDERS[placeholder].format_map(values))
    return text


class Values(dict):
    """What the placeholders stand for; the data only when a command names it (it needs the shared run)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__(venv=str(Path(sys.executable).parent))
        self.request = request

    def __missing__(self, key: str) -> str:
        data = self.request.getfixturevalue("readme_data")
        if key not in data:
            raise KeyError(key)
        self.update(data)
        return data[key]


def with_settings(words: list[str], settings: tuple[str, ...]) -> list[str]:
    """`words` with each key=value of `settings` in place of the command's own value of that key
    (`+key` and `key` are one key), or appended; later settings win over earlier ones."""
    words = list(words)
    for setting in settings:
        key = setting.split("=", 1)[0].lstrip("+")
        same = [
            i
            for i, w in enumerate(words)
            if "=" in w and not w.startswith("-") and w.split("=", 1)[0].lstrip("+") == key
        ]
        if same:
            words[same[0]] = setting
        else:
            words.append(setting)
    return words


@cache
def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts]: command name -> "module:function"."""
    import tomllib  # Python >= 3.11, as the suite's interpreter

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def is_python(word: str) -> bool:
    return re.fullmatch(r"python(3(\.\d+)?)?", Path(word).name) is not None


class Runner:
    """Runs a page's commands in one copy of the checkout, by the table."""

    def __init__(self, request: pytest.FixtureRequest, checkout: Path) -> None:
        self.request, self.checkout = request, checkout
        self.values = Values(request)

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def run(self, command: Command) -> None:
        rule = rule_for(command.text)
        if rule is None:
            pytest.fail(
                f"{command.where}: `{command.text}` has no rule in tests/test_readme.py (RULES: how to "
                f"run it small here) and no marker; add a rule, or mark it: {marker_for(command, 'REASON')}",
                pytrace=False,
            )
        if rule.how == "mark":
            pytest.fail(
                f"{command.where}: `{command.text}` cannot run here ({rule.why}); mark it just above "
                f"its code block: {marker_for(command, rule.why)}",
                pytrace=False,
            )
        self.stage(rule.setup)
        words = [substitute(word, self.values) for word in command.words]
        if rule.how == "make":
            self.make(words, rule)
        elif rule.how == "shell":
            self.check(self.shell(shlex.join(words), rule))
        else:
            self.check(self.execute(words, rule))

    def check(self, out: Outcome) -> None:
        CHECKS[out.rule.expect](out)

    def stage(self, setup: tuple[str, ...]) -> None:
        if "run" in setup:
            shutil.copytree(self.fixture("trained_run"), self.checkout / "outputs" / "train" / RUN)
        if "bundle" in setup:
            bundle = self.checkout / "outputs" / "train" / RUN / "export" / "onnx"
            shutil.copytree(self.fixture("onnx_bundle"), bundle)
        if "sweep" in setup:
            shutil.copytree(self.fixture("readme_sweep"), self.checkout / "outputs" / "multirun" / SWEEP)

    def execute(self, words: list[str], rule: Rule) -> Outcome:
        words = with_settings(words, rule.add)
        if words[0] in console_scripts():
            script, args = str(self.fixture("console_scripts_dir") / words[0]), words[1:]
        else:
            assert is_python(words[0]), f"{rule.pattern}: not a python command: {shlex.join(words)}"
            script, args = (f"-m {words[2]}", words[3:]) if words[1] == "-m" else (words[1], words[2:])
            script = script if script.startswith("-m ") else str(self.checkout / script)
        result = self.fixture("readme_warm").run(script, args, self.checkout)
        return Outcome(words, self.checkout, result.returncode, result.stdout, result.stderr, rule)

    def shell(self, line: str, rule: Rule) -> Outcome:
        """A recipe line, through the shell as make runs it."""
        result = subprocess.run(line, shell=True, cwd=self.checkout, capture_output=True, text=True)
        return Outcome(
            shlex.split(line), self.checkout, result.returncode, result.stdout, result.stderr, rule
        )

    def make(self, words: list[str], rule: Rule) -> None:
        # Under `make test` the suite is itself a recipe: the outer make's MAKELEVEL and MAKEFLAGS
        # would make this one print "make[1]: Entering directory" among the recipe's lines.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        recipe = subprocess.run(
            [*words, "-n", "--no-print-directory", "-o", ".venv/.installed"],
            cwd=self.checkout,
            capture_output=True,
            text=True,
            env=env,
        )
        assert recipe.returncode == 0 and recipe.stdout.strip(), recipe.stderr
        for line in recipe.stdout.splitlines():
            line_rule = rule_for(line)
            assert line_rule and line_rule.how in ("python", "shell"), (
                f"`{shlex.join(words)}` runs `{line}`, which no python or shell rule in RULES covers"
            )
            line = substitute(line, self.values)
            self.check(
                self.execute(shlex.split(line), line_rule)
                if line_rule.how == "python"
                else self.shell(line, line_rule)
            )
        self.check(Outcome(words, self.checkout, 0, "", "", rule))


# ================================================================================================
# Fixtures and tests.
# ================================================================================================


@pytest.fixture(scope="session")
def console_scripts_dir(tmp_path_factory) -> Path:
    """The console scripts, each as pip writes it (the suite's .venv may predate one): the same
    entry function a `pip install .` puts on PATH, run in the warm interpreter like a script."""
    folder = tmp_path_factory.mktemp("bin")
    for name, target in console_scripts().items():
        module, function = target.split(":")
        (folder / name).write_text(
            f"import sys\nfrom {module} import {function}\n\n"
            f"if __name__ == '__main__':\n    sys.exit({function}())\n"
        )
    return folder


@pytest.fixture(scope="session")
def readme_warm(tmp_path_factory):
    runner = WarmEntry(tmp_path_factory.mktemp("readme_warm"), preload=PRELOAD)
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def readme_data(trained_run, tmp_path_factory) -> dict[str, str]:
    """{photos}: the data the shared run trained on (so it can be resumed); {new}: 3 new images."""
    new = make_images(tmp_path_factory.mktemp("readme_new"), {"new": 3}, size=40) / "new"
    photos = json.loads((trained_run / "run.json").read_text())["data_root"]
    return {"photos": photos, "new": str(new)}


@pytest.fixture(scope="session")
def readme_sweep(readme_warm, readme_data, tmp_path_factory) -> Path:
    """A finished 2-job sweep for `python -m effnet.report`."""
    cwd = tmp_path_factory.mktemp("readme_sweep")
    args = ["-m", f"data.root={readme_data['photos']}", *SMALL, "lr=1e-3,3e-3"]
    result = readme_warm.run("train.py", args, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (cwd / "outputs" / "multirun").iterdir()
    return sweep


def all_commands() -> list[Command]:
    """Every page's commands, README.md first; a command an earlier one already runs word for
    word is skipped, naming where it runs (the same command runs once)."""
    commands, runs = [], {}
    for path in pages():
        for c in parse_readme(path.read_text(), page_name(path)).commands:
            if c.skip is None and c.words in runs:
                c = Command(c.line, c.words, f"the same command as {runs[c.words]}, which runs it", c.page)
            elif c.skip is None:
                runs[c.words] = c.where
            commands.append(c)
    return commands


def params() -> list:
    out = []
    for c in all_commands():
        skip = [pytest.mark.skip(reason=f"{c.where} `{c.text}`: {c.skip}")] if c.skip else []
        out.append(pytest.param(c, id=f"{c.page}:L{c.line}:{c.text[:60]}", marks=skip))
    return out


@pytest.mark.parametrize("command", params())
def test_readme_command(command: Command, request, tmp_path):
    Runner(request, copy_checkout(tmp_path / "effnet")).run(command)


def test_the_table_asks_for_a_marker_where_a_command_cannot_run_here():
    for text in (
        "make test",
        "make lock",
        "make clean",
        "optuna-dashboard sqlite:///outputs/optuna.db",
        "docker run --init --rm effnet data.root=/data",
        "EFFNET_DATA=~/photos docker compose -f docker/compose.yaml run --rm train",
        "torchrun --standalone --nproc-per-node=4 train.py trainer=ddp",
        "srun python train.py trainer=ddp",
        "python train.py -m hydra/launcher=slurm data.root=/data/photos",
        "python train.py data=demo -m trainer=ddp trainer.devices=2 lr=1e-3,3e-3",
    ):
        assert rule_for(text).how == "mark", text
    assert rule_for("python train.py data=demo trainer=ddp trainer.devices=2").add == DRY_RUN
    assert all(r.expect in CHECKS and set(r.setup) <= {"run", "bundle", "sweep"} for r in RULES)
    assert rule_for("curl https://example.com | sh") is None


def test_small_settings_replace_the_value_of_a_key_the_command_sets():
    words = ["python", "train.py", "sweep=optuna", "hydra.sweeper.n_trials=30", "+x=1", "--cfg", "job"]
    assert with_settings(words, ("epochs=1", "hydra.sweeper.n_trials=1", "x=2", "epochs=3")) == [
        "python", "train.py", "sweep=optuna", "hydra.sweeper.n_trials=1", "x=2", "--cfg", "job", "epochs=3"
    ]  # fmt: skip


def test_every_marker_marks_a_command():
    problems = [p for path in pages() for p in parse_readme(path.read_text(), page_name(path)).problems]
    assert problems == []


def test_every_page_is_read_and_a_command_on_two_pages_runs_once():
    assert {c.page for c in all_commands()} >= {"README.md", "docs/deploy.md", "docs/multi-gpu.md"}
    run = [c.words for c in all_commands() if c.skip is None]
    assert len(run) == len(set(run))


def test_the_extraction_joins_lines_drops_comments_and_applies_markers():
    markdown = "\n".join(
        [
            "```bash",
            "python train.py a=1 \\",
            "    b=2   # a trailing comment",
            "# a comment line",
            "```",
            "```text",
            "$ python train.py shown=output",
            "```",
            "<!-- not run by the suite: `make test`: the suite -->",
            "```",
            "make demo",
            "make test  # again",
            "```",
            "<!-- not run by the suite: no engine -->",
            "",
            "```sh",
            "docker build .",
            "```",
            "<!-- not run by the suite: `nothing`: stale -->",
            "```bash",
            "make lint",
            "```",
            "<!-- not run by the suite: lost -->",
            "Some text.",
        ]
    )
    readme = parse_readme(markdown)
    assert [(c.line, c.text, c.skip) for c in readme.commands] == [
        (2, "python train.py a=1 b=2", None),
        (11, "make demo", None),
        (12, "make test", "the suite"),
        (17, "docker build .", "no engine"),
        (21, "make lint", None),
    ]
    assert readme.problems == [
        "README.md:19: the marker for `nothing` marks no command below it",
        "README.md:23: a marker not just above a shell code block",
    ]
