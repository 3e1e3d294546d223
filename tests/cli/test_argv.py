"""`~` in any path value, as bash and zsh hand it over, and unknown flags as one line."""

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from effnet.cli.argv import command_words, expand_overrides, order_flags
from effnet.errors import UserError
from tests.helpers import ROOT, make_images, one_error_line, run_train


def test_home_is_expanded_where_a_value_starts_and_nowhere_else(monkeypatch):
    monkeypatch.setenv("HOME", "/home/me")
    given = [
        "data.root=~/photos",
        "ckpt=~",
        "+model.weights=~/w.pth",
        "inputs=~/a,~/b",  # a sweep
        "out=[~/x,y]",
        "lr=choice(~/p,~/q)",
        "~dry_run",  # Hydra's delete
        "~epochs=3",
        "--config-dir=~/conf",  # a flag: Hydra's business
        "name=a~b",
        "weights=~nobody_here_at_all/w",
    ]
    assert expand_overrides(given) == [
        "data.root=/home/me/photos",
        "ckpt=/home/me",
        "+model.weights=/home/me/w.pth",
        "inputs=/home/me/a,/home/me/b",
        "out=[/home/me/x,y]",
        "lr=choice(/home/me/p,/home/me/q)",
        "~dry_run",
        "~epochs=3",
        "--config-dir=~/conf",
        "name=a~b",
        "weights=~nobody_here_at_all/w",
    ]


# Between them, the two shells hand over both forms of every path key: bash leaves the dotted keys
# literal (`data.root=~/x` is no variable name) and expands `ckpt=~/x`; zsh expands neither.
SHELL_COMMANDS = {
    "bash": ["train", "eval"],
    "zsh": ["train", "predict", "export"],
}


@pytest.mark.parametrize("shell", list(SHELL_COMMANDS))
def test_every_path_argument_takes_a_home_folder_as_the_shells_pass_it(shell, trained_run, tmp_path):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    home = tmp_path / "home"
    make_images(home / "photos", {"ant": 3, "bee": 3, "wasp": 3})
    (home / "run").symlink_to(trained_run)
    (home / "w.safetensors").write_bytes(b"")  # a dry run checks that it is there, not its content
    python = shlex.quote(sys.executable)
    commands = {
        "train": "train.py data.root=~/photos model.weights=~/w.safetensors ckpt_path=~/run "
        "trainer.accelerator=cpu dry_run=true",
        "predict": "predict.py ckpt=~/run inputs=~/photos/ant out=~/preds.csv num_workers=0",
        "eval": "eval.py ckpt=~/run data.root=~/photos num_workers=0 misclassified=0",
        "export": "export.py ckpt=~/run out=~/bundle format=safetensors bench.enabled=false num_workers=0",
    }
    script = f"cd {shlex.quote(str(tmp_path))}\n" + "\n".join(
        f"{python} {ROOT}/{commands[c]} || exit 1" for c in SHELL_COMMANDS[shell]
    )
    env = {**os.environ, "HOME": str(home), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    done = SHELL_COMMANDS[shell]
    plan = " ".join(result.stdout.split())
    assert f"data {home / 'photos'}: 3 classes" in plan and f"file {home / 'w.safetensors'}" in plan
    if "predict" in done:
        assert len((home / "preds.csv").read_text().splitlines()) == 1 + 3
    if "eval" in done:
        (scored,) = tmp_path.glob("outputs/eval/*/eval.json")
        assert json.loads(scored.read_text())["data"] == f"{home / 'photos'} (every image)"
    if "export" in done:
        assert (home / "bundle" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("~*")), "no folder named ~ was made"


def test_an_unknown_flag_is_one_line(tmp_path):
    result = run_train(["--no-such-flag", "lr=1"], cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result).startswith("unknown option --no-such-flag; see python train.py --help")
    with pytest.raises(UserError, match="invalid choice: 'nope'"):
        order_flags(["--cfg", "nope"], "train.py")


def test_overrides_may_stand_on_both_sides_of_a_flag():
    args = ["data.root=/p", "-m", "lr=1e-3,1e-4", "--cfg", "job", "seed=1"]
    assert order_flags(args, "train.py") == ["-m", "--cfg", "job", "data.root=/p", "lr=1e-3,1e-4", "seed=1"]


def test_a_config_group_chosen_twice_is_said_in_the_plan(tmp_path, monkeypatch):
    """preset=small preset=large: Hydra keeps the last without a word; the plan (dry run and the
    run's log) says so. A plain value given twice is Hydra's ordinary last-wins, said nowhere."""
    from hydra import compose, initialize_config_dir

    from effnet import plan
    from effnet.cli.argv import repeated_choices
    from tests.helpers import CONF_DIR

    groups = {"preset", "model", "hydra/launcher"}
    assert repeated_choices(["preset=small", "lr=1", "+preset=large", "lr=2", "~model"], groups) == [
        "preset is given twice (preset=small, then +preset=large): the last wins, preset=large"
    ]
    assert repeated_choices(["hydra/launcher=basic", "hydra/launcher=slurm"], groups)[0].startswith(
        "hydra/launcher is given twice"
    )
    monkeypatch.chdir(tmp_path)
    data = make_images(tmp_path / "data", {"ant": 4, "bee": 4})
    overrides = [f"data.root={data}", "trainer.accelerator=cpu", "preset=small", "preset=large"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    resolved, _, _ = plan.resolve(cfg)
    assert resolved.recipe.data_size == "large"
    assert "preset is given twice (preset=small, then preset=large): the last wins, preset=large" in [
        value for key, value in plan.plan_rows(resolved) if key == "warning"
    ]


def test_the_command_to_type_again_is_the_one_the_user_typed(tmp_path, monkeypatch):
    """A resume line or the dry run's `start it` line: `python train.py`, or an installed console
    script by its name where PATH finds that very file, by its path where it does not."""
    assert command_words("/src/effnet/train.py") == ["python", "train.py"]
    assert command_words("/src/effnet/train.py", keep_path=True) == ["python", "/src/effnet/train.py"]
    script = tmp_path / "bin" / "effnet-train"
    script.parent.mkdir()
    script.write_text("#!/usr/bin/env python\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    assert command_words(str(script)) == [str(script)]
    monkeypatch.setenv("PATH", str(script.parent))
    assert command_words(str(script)) == ["effnet-train"]
