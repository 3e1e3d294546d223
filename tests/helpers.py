"""Plain helpers the tests share: small image folders, composed configs, scripts run as a user runs
them, and readers for what a run writes. Fixtures are in conftest.py. No network, no downloads."""

from __future__ import annotations

import csv
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from PIL import Image

from effnet.plan import Network, Optimisation, Regularisation, Runtime
from effnet.preprocessing import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "src" / "effnet" / "conf"
TRAIN_PY = ROOT / "train.py"

# Small, fast and offline: what every training test adds to its overrides.
FAST = [
    "model.pretrained=false",
    "image_size=32",
    "batch_size=4",
    "epochs=1",
    "data.num_workers=0",
    "scheduler.warmup_epochs=0",
    "trainer.accelerator=cpu",
    "dashboards.train_batch=0",  # no train_batches.png (~0.5 s a run); the tests of BatchPreview turn it on
]
# The run the eval, predict and export tests share (conftest.trained_run).
TINY = [*FAST, "model=mobilenetv3_small", "epochs=2", "batch_size=8", "lr=3e-3"]
# A training run of a few seconds (the README harness, the installed effnet-train): FAST, the shared
# run's model, one intra-op thread (2 xdist workers share 2 cores, and threads competing for a core
# wait on each other: docs/speed.md, "Threads"), 2 batches of training and of validation, no grid
# of sample images to draw.
SMALL = (
    *FAST,
    "model=mobilenetv3_small",
    "data.threads=1",
    "dashboards.samples=0",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
)
# bench.py at its smallest: a few images, one ceiling step (tests/bench, the README harness)
BENCH_TINY = (
    "model=mobilenetv3_small",
    "image_size=32",
    "batch_size=4",
    "data.threads=1",
    "trainer.accelerator=cpu",
    "bench.images=16",
    "bench.val_images=8",
    "bench.ceiling_steps=1",
    "bench.warmup_steps=0",
)


def make_images(folder: Path, classes: dict[str, int], size: int = 40, seed: int = 0) -> Path:
    """folder/<class>/<i>.png with a class-specific colour, so a model can learn something."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            base = np.zeros((size, size, 3)) + 60
            base[..., c % 3] = 200
            pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:03d}.png")
    return folder


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour gradient (a different one per channel) under uniform noise: big enough to
    decode reduced, fine enough that a crop off by a pixel or a flip shows, and quick to make."""
    pixels = np.random.default_rng(seed).integers(0, 64, (height, width, 3), dtype=np.uint8)
    x = (np.arange(width, dtype=np.int64) * 160 // width).astype(np.uint8)
    y = (np.arange(height, dtype=np.int64) * 160 // height).astype(np.uint8)
    pixels[..., 0] += x
    pixels[..., 1] += y[:, None]
    pixels[..., 2] += x[::-1]
    return Image.fromarray(pixels)


def compose_cfg(overrides: list[str], config_name: str = "train"):
    """A config composed as the entry scripts compose it (without running the Hydra callbacks)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_train(
    args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None, script: Path = TRAIN_PY
) -> subprocess.CompletedProcess:
    """train.py (or another entry script) in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": source_path(), **(env or {})},
    )


def source_path() -> str:
    """PYTHONPATH for a child process: this checkout's src first, as pytest's own pythonpath does
    (an editable install may point at another checkout, e.g. a git worktree's main)."""
    return os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)


def run_script(script: str, args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """eval.py / predict.py / export.py in a fresh process."""
    return run_train(args, cwd=cwd, timeout=timeout, script=ROOT / script)


def metric_rows(run_dir: Path, key: str) -> list[dict]:
    """metrics.csv rows that hold `key`."""
    with open(run_dir / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get(key)]


def export_info(bundle: Path) -> dict:
    return json.loads((bundle / "export.json").read_text())


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `effnet: error:` line a user error must produce (asserted), without its prefix."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("effnet: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0].removeprefix("effnet: error: ")


def module_sections(image_size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), **changes) -> dict:
    """The module's arguments as a plan would give them, with `changes` per section."""
    prep = Preprocessing(image_size, 0.875, "bicubic", mean, std)
    return {
        "network": {
            **Network("mobilenetv3_small_100", ("a", "b"), image_size, 0.2).__dict__,
            **changes.get("network", {}),
        },
        "preprocessing": prep.as_dict(),
        "optimisation": {**Optimisation().__dict__, **changes.get("optimisation", {})},
        "regularisation": {**Regularisation().__dict__, **changes.get("regularisation", {})},
        "runtime": {**Runtime().__dict__, **changes.get("runtime", {})},
    }


# Entry scripts run from one warm interpreter: each case is still its own process (forked), with its
# own working folder, environment, exit status and output, so a table of bad inputs can assert the
# command-line contract per case without paying Python's and Hydra's start-up every time.
_WARM = r"""
import gc, importlib, json, os, runpy, sys, traceback
import effnet.cli.app  # what every entry script imports first, imported once
for name in sys.argv[1:]:  # and, for cases that load a model anyway, the heavy modules too
    importlib.import_module(name)
gc.freeze()  # the cases' collections skip what is imported here (nor copy its pages to count it)
for line in sys.stdin:
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if case["session"]:  # its own process group, as a job step has
                os.setsid()
            os.chdir(case["cwd"])
            os.environ.update(case["env"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = [case["script"], *case["args"]]
            try:
                if case["script"].startswith("-m "):  # python -m module args
                    runpy.run_module(case["script"][3:], run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(case["script"], run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            with open(case["modules"], "w") as f:
                json.dump(sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "timm"}), f)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps(pid), flush=True)  # first the pid (a test may signal the case), then its exit
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
os._exit(0)  # not Python's teardown of torch's objects: seconds, for nothing
"""


class WarmRun(subprocess.CompletedProcess):
    """A finished case: returncode, stdout, stderr, and the heavy modules it imported."""

    heavy: list[str]


class WarmProcess:
    """A case still running (WarmEntry.start): its pid to signal, and poll/wait as a Popen has them."""

    def __init__(self, entry: WarmEntry, pid: int, args: list[str], files: dict[str, str]) -> None:
        self.entry, self.pid, self.args, self.files = entry, pid, args, files
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def poll(self) -> int | None:
        return self.wait(timeout=0, check=False)

    def wait(self, timeout: float | None = None, check: bool = True) -> int | None:
        """The exit status (negative: killed by that signal); TimeoutError after `timeout` s when
        `check`, else None."""
        if self.returncode is None:
            line = self.entry.read_line(timeout)
            if line is None:
                if check:
                    raise TimeoutError(f"{self.args} still running after {timeout} s")
                return None
            self.returncode = json.loads(line)
            self.entry.running = None
        return self.returncode

    def finish(self, timeout: float | None = None) -> WarmRun:
        """Wait (killed after `timeout` s, then TimeoutError) and read what it wrote."""
        try:
            self.wait(timeout)
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            self.wait()
            raise
        read = {k: Path(self.files[k]).read_text() for k in ("stdout", "stderr")}
        out = WarmRun(self.args, self.returncode, read["stdout"], read["stderr"])
        modules = Path(self.files["modules"])
        out.heavy = json.loads(modules.read_text()) if modules.is_file() else []
        return out


class WarmEntry:
    """`run(script, args, cwd)` runs train.py/eval.py/predict.py/export.py as `python script args`
    would (`script` "-m name": as `python -m name args`), in a process forked from an interpreter
    that has already imported effnet.cli.app (and the `preload` modules: then `heavy` says nothing
    about the case). `start` is the same without waiting, for a test that signals the process;
    one case at a time."""

    def __init__(self, scratch: Path, preload: tuple[str, ...] = ()) -> None:
        self.scratch = scratch
        self.count = 0
        self.running: WarmProcess | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WARM, *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: a line the server wrote is one select() sees (WarmProcess.poll)
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": source_path()},  # this checkout's src
        )

    def read_line(self, timeout: float | None) -> str | None:
        """The server's next line, or None when none came within `timeout` seconds."""
        if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()  # unbuffered: reads up to the newline, no further
        if not line:
            raise RuntimeError(f"the warm interpreter ended (exit {self.proc.wait()})")
        return line.decode()

    def start(
        self, script: str, args: list[str], cwd: Path, env: dict | None = None, new_session: bool = False
    ) -> WarmProcess:
        assert self.running is None, "one case at a time: wait for the last one first"
        self.count += 1
        files = {k: str(self.scratch / f"{self.count}.{k}") for k in ("stdout", "stderr", "modules")}
        script = script if script.startswith("-m ") else str(ROOT / script)
        case = {"script": script, "args": args, "cwd": str(cwd), "env": env or {}, "session": new_session}
        self.proc.stdin.write((json.dumps({**case, **files}) + "\n").encode())
        self.proc.stdin.flush()
        self.running = WarmProcess(self, json.loads(self.read_line(None)), args, files)
        return self.running

    def run(self, script: str, args: list[str], cwd: Path, env: dict | None = None) -> WarmRun:
        return self.start(script, args, cwd, env).finish()

    def close(self) -> None:
        if self.running is not None:  # a test that failed before its case ended
            self.running.send_signal(signal.SIGKILL)
            self.running.wait()
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def tree(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every file under `folder` with its size and modification time (folders by name only):
    equal trees, nothing written."""
    return {
        str(p.relative_to(folder)): None
        if p.is_dir() and not p.is_symlink()
        else (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def start_and_run(cfg, run_dir) -> dict:
    """What train.py does with a composed config: the start (effnet.start: check, walk, plan,
    claim), then the run (effnet.training.train)."""
    from effnet.start import start
    from effnet.training.train import train

    return train(start(cfg, run_dir))
