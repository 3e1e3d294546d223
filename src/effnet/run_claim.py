"""A run folder holds one run: what it is a run of (run.json), and one process writing it (run.lock).

train.py writes into a folder that may already exist in two cases: a resume (`ckpt_path`) and an
explicit `hydra.run.dir`. Before anything is written there (Hydra's `.hydra/` and `train.log`
included), the start (effnet.start) claims the folder: `check` writes nothing, `take` makes and
locks it:
- a resume must be the same run: the data root, classes, model, image size and head that
  run.json records. A data folder that moved is followed: the split's files are found by their
  path relative to the old root, and split.json and run.json are rewritten to the new one;
- a fresh run never adopts another run: a folder holding a complete checkpoint is refused (a
  folder whose run was killed before its first checkpoint holds nothing to keep, and is reused);
- one process at a time: an flock on run.lock. The kernel drops it when the process ends, however
  it ends, so a killed run never leaves the folder locked.
Only rank 0 claims: the other ranks of a run (Lightning's DDP processes, torchrun, SLURM tasks)
write into the folder their rank 0 holds.

Imports no torch: the start reads the resumed checkpoint itself and hands it to `check_checkpoint`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from effnet.checkpoints import find
from effnet.data import folders
from effnet.errors import UserError
from effnet.files import write_json

log = logging.getLogger("effnet")

IDENTITY_FILE = "run.json"
LOCK_FILE = "run.lock"

_held: dict[Path, int] = {}  # run folder -> this process's locked descriptor
_made: dict[Path, Path] = {}  # folder this process created -> the topmost folder it had to create


@dataclass(frozen=True)
class Identity:
    """What a run is a run of: resuming with anything else would train another model, or the same
    model on other data. (The head's widths and the image size change the network's tensors.)"""

    data_root: str
    classes: tuple[str, ...]
    model: str
    image_size: int
    head: tuple[int, ...] = ()

    def differences(self, other: Identity) -> list[str]:
        """`key: this -> other` for each field that differs (the data root is compared apart)."""
        out = []
        for key in ("classes", "model", "image_size", "head"):
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                show = (lambda v: ",".join(map(str, v)) or "none") if key in ("classes", "head") else str
                out.append(f"{key} {show(mine)} -> {show(theirs)}")
        return out


def data_root(cfg: DictConfig) -> str:
    return os.path.abspath(os.path.expanduser(str(cfg.data.root)))


def wanted(cfg: DictConfig, classes: list[str] | tuple[str, ...]) -> Identity:
    """The identity this command asks for, with the classes found in its data root."""
    return Identity(
        data_root=data_root(cfg),
        classes=tuple(classes),
        model=str(cfg.model.backbone),
        image_size=int(cfg.image_size or cfg.model.image_size),
        head=tuple(int(w) for w in cfg.model.head.hidden),
    )


def identity_of(plan) -> Identity:
    """What a run plan (effnet.plan.RunPlan) trains: the identity its folder records."""
    net = plan.network
    root = os.path.abspath(plan.data.root)
    return Identity(root, tuple(net.classes), net.backbone, net.image_size, tuple(net.hidden))


def record(run_dir: Path, identity: Identity) -> Path:
    return write_json(Path(run_dir) / IDENTITY_FILE, asdict(identity))


def recorded(run_dir: Path) -> Identity | None:
    """The run folder's identity: run.json, or for a folder from before run.json, split.json and
    resolved.yaml. None when the folder records no run."""
    run_dir = Path(run_dir)
    try:
        raw = json.loads((run_dir / IDENTITY_FILE).read_text())
        return Identity(**{**raw, "classes": tuple(raw["classes"]), "head": tuple(raw.get("head", ()))})
    except (OSError, ValueError, TypeError, KeyError):
        pass
    split = folders.load_split(run_dir)
    if split is None:
        return None
    try:
        resolved = OmegaConf.load(run_dir / "resolved.yaml")
        model, size = str(resolved.config.model.backbone), int(resolved.resolved.image_size)
        head = tuple(int(w) for w in resolved.config.model.head.hidden)
    except Exception:  # no resolved.yaml (or an unreadable one): the checkpoint is checked instead
        return None
    return Identity(os.path.abspath(split.root), tuple(split.classes), model, size, head)


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def holds_a_run(run_dir: Path) -> Path | None:
    """The checkpoint that makes `run_dir` a run another command must not overwrite."""
    folder = Path(run_dir) / find.CHECKPOINTS
    return find.in_folder(folder, "resume") if folder.is_dir() else None


def current_classes(cfg: DictConfig, surveyed, recorded_classes: tuple[str, ...]) -> list[str]:
    """The classes the data root has now, as a run would find them, from the start's walk and
    scan (effnet.plan.Survey). A class folder holding any image file counts; one the run does not
    know counts only if one of its files decodes (a class of broken files is left out by the
    scan, and so was not the run's)."""
    found = folders.discover(surveyed.root, cfg.data.val_fraction, cfg.seed, found=surveyed.found)
    bad = surveyed.report.bad_files

    def usable(label: int) -> bool:
        return any(p not in bad for p, y in found.train + found.val if y == label)

    return [c for i, c in enumerate(found.classes) if c in recorded_classes or usable(i)]


def check_resume(cfg: DictConfig, run_dir: Path, surveyed) -> str | None:
    """UserError unless this command resumes the run `run_dir` holds. Returns the old data root
    when the data folder has moved to this command's data.root (see `follow_move`)."""
    was = recorded(run_dir)
    if was is None:
        return None  # a checkpoint outside a run folder: `check_checkpoint` compares its network
    resumes, root = f"ckpt_path={cfg.ckpt_path}", data_root(cfg)
    moved = None
    if not _same_folder(was.data_root, root):
        if os.path.isdir(was.data_root):
            raise UserError(
                f"{resumes}: the run trained on data.root={was.data_root}, not {root}; resume "
                f"with data.root={was.data_root}, or start a new run (no ckpt_path) to train on other data"
            )
        moved = was.data_root
    changes = was.differences(wanted(cfg, current_classes(cfg, surveyed, was.classes)))
    if changes:
        listed = IDENTITY_FILE if (Path(run_dir) / IDENTITY_FILE).is_file() else "resolved.yaml"
        raise UserError(
            f"{resumes}: this command is not the run in {run_dir} ({'; '.join(changes)}); resume with the "
            f"run's own settings ({listed} there lists them), or start a new run (no ckpt_path)"
        )
    if moved is not None:
        split = folders.load_split(run_dir)
        paths = [p for p, _ in split.train + split.val + split.test] if split else []
        found = sum(os.path.exists(_rebased(p, moved, root)) for p in paths)
        if paths and not found:
            raise UserError(
                f"{resumes}: data.root={root} holds none of the run's {len(paths)} images by their "
                f"path relative to its old data.root={moved} (e.g. {os.path.relpath(paths[0], moved)}); "
                "pass the folder the run was trained on"
            )
    return moved


def _rebased(path: str, old_root: str, new_root: str) -> str:
    return os.path.join(new_root, os.path.relpath(path, old_root))


def follow_move(run_dir: Path, old_root: str, new_root: str) -> str:
    """Rewrite split.json and run.json for a data folder that moved; a line saying so."""
    split = folders.load_split(run_dir)
    if split is not None:
        folders.save_split(folders.rebase(split, old_root, new_root), run_dir)
    was = recorded(run_dir)
    if was is not None:
        record(run_dir, Identity(new_root, was.classes, was.model, was.image_size, was.head))
    return f"the data folder moved from {old_root} to {new_root}: the run's split follows it (files matched by relative path)"


def check_makeable(folder: Path) -> None:
    """`make`'s refusals, found without creating anything: the start checks this before its
    heavy work, and makes the folder only at the end. Tried for real (an empty folder made and
    removed where `folder` would go): permission bits say nothing for root or read-only mounts."""
    folder = Path(folder).absolute()
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"hydra.run.dir={folder}: exists and is not a folder")
        return
    existing = folder.parent
    while not existing.exists():
        existing = existing.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".effnet-check-", dir=existing))
    except OSError as exc:
        raise UserError(f"hydra.run.dir={folder}: cannot create the run folder ({exc.strerror})") from exc


def make(folder: Path) -> None:
    """Create `folder` (and its missing parents), remembering what this process created so that
    `discard` can take it away again. One line when it cannot be created."""
    folder = Path(folder).absolute()
    top = folder
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    if folder.exists():
        if not folder.is_dir():
            raise UserError(f"hydra.run.dir={folder}: exists and is not a folder")
        return
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise UserError(f"hydra.run.dir={folder}: cannot create the run folder ({exc.strerror})") from exc
    _made[folder] = top


def discard(folder: Path) -> bool:
    """After a user error: remove `folder` if this process created it and no checkpoint was
    written into it (Hydra's .hydra/ and log, the split, the plan are all that is in it), along
    with the empty parents it created. True when removed."""
    folder = Path(folder).absolute()
    top = _made.get(folder)
    if top is None or not folder.is_dir() or any(folder.rglob("*.ckpt")):
        return False
    release(folder)
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    while parent != top.parent and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    _made.pop(folder, None)
    return True


def lock(run_dir: Path) -> None:
    """Hold run_dir/run.lock for the life of this process; UserError if another process holds it."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:
        return
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise UserError(
            f"{run_dir} is in use by another run ({holder}); wait for it to end or stop it, "
            "or give this run its own folder"
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    _held[run_dir] = fd


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).absolute(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor drops the flock


def check(cfg: DictConfig, run_dir: Path, surveyed) -> str | None:
    """The checks of a claim, which write nothing: a resume must be the run `run_dir` holds (the
    classes compared are the ones the start's survey found), a fresh run must not take a folder
    holding one. Returns the old data root of a moved data folder."""
    if cfg.get("ckpt_path") is not None:
        return check_resume(cfg, run_dir, surveyed)
    _refuse_occupied(run_dir)
    return None


def take(run_dir: Path, resume: bool, moved: str | None = None, new_root: str | None = None) -> None:
    """Create and lock `run_dir` once `check` has passed; follow a moved data folder. Rank 0 only."""
    make(run_dir)
    lock(run_dir)
    if not resume:
        _refuse_occupied(run_dir)  # again, now that no other process can be writing it
    if moved is not None:
        print(f"effnet: {follow_move(run_dir, moved, new_root)}", file=sys.stderr, flush=True)


def _refuse_occupied(run_dir: Path) -> None:
    held = holds_a_run(run_dir)
    if held is not None:
        raise UserError(
            f"{run_dir} already holds a run ({held.relative_to(run_dir)}); resume it with "
            f"ckpt_path={run_dir}, or give the new run another folder"
        )


def check_checkpoint(plan, ckpt_path: str, checkpoint: Path, raw: dict) -> None:
    """The resumed checkpoint's network (`raw`, as effnet.checkpoints.read read it) compared to
    the one the plan builds: the run folder's record may be missing (a checkpoint from elsewhere,
    an older run), the checkpoint's never is."""
    from effnet.checkpoints import read

    network = read.sections(raw["hyper_parameters"])["network"]
    now = identity_of(plan)
    was = Identity(
        now.data_root,
        tuple(network["classes"]),
        str(network["backbone"]),
        int(network["image_size"]),
        tuple(int(w) for w in network.get("hidden") or ()),
    )
    changes = was.differences(now)
    if changes:
        raise UserError(
            f"ckpt_path={ckpt_path}: {checkpoint} holds another network than this command builds "
            f"({'; '.join(changes)}); resume with the run's own settings, or start a new run (no ckpt_path)"
        )


def finished(run_dir: Path, next_epoch: int, epochs: int) -> str | None:
    """A line saying so when the resumed checkpoint has done every epoch this command plans."""
    if next_epoch < epochs:
        return None
    return (
        f"{run_dir} has finished: {next_epoch} of epochs={epochs} done, so there is nothing to resume and "
        f"nothing was changed; to train longer, resume with epochs= more than {next_epoch}"
    )
