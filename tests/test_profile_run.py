"""scripts/profile_run.py: py-spy stacks of a whole run go to one phase each (the first in PHASES
order that they hold), helper threads left out, and the table shows seconds at the sampling rate."""

from __future__ import annotations

import sys

from scripts.profile_run import main, phases

MAIN = "<module> (train.py:10);fit (effnet/training/train.py:327)"
STACKS = {
    # validation's own loader waits count as validation, not as waiting for data
    f"{MAIN};_EvaluationLoop.run (lightning/pytorch/loops/evaluation_loop.py:140);_next_data (dataloader.py:1)": 30,
    f"{MAIN};_DataFetcher.__next__ (lightning/pytorch/loops/fetchers.py:134)": 5,
    f"{MAIN};training_step (effnet/training/module.py:150);Conv2d.forward (conv.py:565)": 100,
    f"{MAIN};Dashboards.on_train_epoch_end (effnet/training/callbacks.py:491);_save (effnet/plots.py:103)": 10,
    "<module> (train.py:7);_find_and_load (<frozen importlib._bootstrap>:1176)": 20,
    f"{MAIN};Trainer.fit (lightning/pytorch/trainer/trainer.py:560)": 3,
    "Thread._bootstrap (threading.py:1002);Queue._feed (multiprocessing/queues.py:231)": 500,
}


def write(tmp_path, stacks=STACKS):
    raw = tmp_path / "run.txt"
    raw.write_text("".join(f"{stack} {n}\n" for stack, n in stacks.items()))
    return raw


def test_each_stack_counts_once_in_its_first_phase_and_helper_threads_not_at_all(tmp_path):
    counts = phases(str(write(tmp_path)))
    assert counts == {
        "validation": 30,
        "waiting for data": 5,
        "training step": 100,
        "figures and metrics files": 10,
        "imports": 20,
        "other (set-up, loops, exit)": 3,
    }


def test_the_table_gives_seconds_and_shares_per_run(tmp_path, monkeypatch, capsys):
    one = write(tmp_path)
    other = tmp_path / "timm.txt"
    other.write_text(f"{MAIN};train_one_epoch (train.py:1000) 84\n")
    monkeypatch.setattr(sys, "argv", ["profile_run.py", str(one), str(other), "--rate", "2"])
    main()
    rows = {line[:30].strip(): line[30:].split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["training step"] == ["50.0", "s", "59.5%", "42.0", "s", "100.0%"]
    assert rows["total"] == ["84.0", "s", "100.0%", "42.0", "s", "100.0%"]
