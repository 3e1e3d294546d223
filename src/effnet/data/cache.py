"""data.cache: decode each training image once into a uint8 store; later epochs only augment.

Decoding a JPEG costs as much as all of the augmentation after it, and it gives the same pixels
every epoch. The store keeps each training image as decoded for training (`base_image`: EXIF
upright, RGB, no larger than the smallest random-resized crop needs, as FFCV's max_resolution),
so an epoch after the first only crops, flips and augments.

- `ram`: one flat buffer in shared memory, allocated up front from the image headers and
  filled by the loader workers as the first epoch decodes each image (no start-up pass).
- `disk`: the same layout in a memory-mapped file under outputs/cache/, keyed like the data
  scan's cache. It is built (or brought up to date) before training under a file lock, so runs
  and DDP ranks share it; an image whose size or mtime changed is decoded again.

Without a store, training decodes each sample at the JPEG scale its own random crop needs
(effnet.data.sources); from a store the crop is drawn on the stored image instead, and cut from
it with the same op (effnet.data.crop.cut: for the light and standard levels a tensor resize
of the stored array, with no copy before it). An image neither path reduces (a JPEG under twice
the output size, any other format under twice the decode size) gives the same pixels either way;
a bigger one gets crops drawn from the same distribution but not the same batches. Within one
data.cache (ram and disk store the same `base_image`), an epoch's batches depend only on
(seed, epoch), so resume stays exact.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from effnet import diskspace
from effnet.data.decode import DECODE_ERRORS, base_image, upright_size
from effnet.data.scan import CACHE_DIR
from effnet.files import write_json

log = logging.getLogger("effnet")

CACHE_VERSION = 1


def base_shape(path: str, side: int) -> tuple[int, int] | None:
    """(height, width) of base_image(path, side), from the header alone; None if unreadable."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (side, side))  # sets the JPEG scale: nothing is decoded yet
            w, h = upright_size(img)
    except DECODE_ERRORS:
        return None
    short = min(w, h)
    if short >= 2 * side:
        factor = short // side
        w, h = math.ceil(w / factor), math.ceil(h / factor)
    return h, w


def _shapes(paths: Sequence[str], side: int, workers: int) -> np.ndarray:
    """(N, 2) int64 heights and widths; 0 x 0 for a file that cannot be read (never stored).
    Threads: opening a file is I/O, and Pillow releases the GIL while it reads."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = list(pool.map(lambda p: base_shape(p, side), paths))
    return np.array([s or (0, 0) for s in found], dtype=np.int64).reshape(-1, 2)


class Store:
    """Variable-size HWC uint8 images at fixed offsets of one flat buffer, plus a filled flag each.

    `buffer` is a shared-memory tensor (ram) or the path of a memory-mapped file (disk); forked or
    spawned loader workers see the same bytes. A worker writes an image, then sets its flag,
    holding `lock`; a reader that finds the flag set takes the lock once before reading, so it
    never sees the flag before the pixels (which a weakly ordered CPU could otherwise show when
    data.balance=weighted_sampler draws one image twice in an epoch).
    """

    def __init__(
        self,
        shapes: np.ndarray,
        offsets: np.ndarray,
        buffer: torch.Tensor | Path,
        filled: torch.Tensor,
        kind: str,
        writable: bool,
    ) -> None:
        self.shapes, self.offsets = shapes, offsets
        self.buffer, self.filled = buffer, filled
        self.kind, self.writable = kind, writable
        self.lock = multiprocessing.Lock() if writable else None
        self._pixels: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int((self.shapes.prod(axis=1) * 3).sum())

    def __len__(self) -> int:
        return len(self.shapes)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}  # a spawned worker maps the bytes itself

    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            if isinstance(self.buffer, Path):
                size = self.buffer.stat().st_size
                # copy-on-write: as read-only to the file as "r", but a writable array, which
                # torch.from_numpy takes without a warning (effnet.data.crop never writes to it)
                self._pixels = (
                    np.memmap(self.buffer, np.uint8, "c", shape=(size,)) if size else np.empty(0, np.uint8)
                )
            else:
                self._pixels = self.buffer.numpy()
        return self._pixels

    def _view(self, i: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[i])
        start = int(self.offsets[i])
        return self.pixels()[start : start + h * w * 3].reshape(h, w, 3)

    def get(self, i: int) -> np.ndarray | None:
        """Image i's pixels (a read-only view), or None if it is not stored yet."""
        if not self.filled[i]:
            return None
        if self.lock is not None:
            with self.lock:
                pass
        return self._view(i)

    def put(self, i: int, pixels: np.ndarray) -> bool:
        """Store image i; False (and nothing stored) when its shape is not the one planned."""
        if not self.writable or self.filled[i] or pixels.shape != (*self.shapes[i], 3):
            return False
        with self.lock:
            self._view(i)[...] = pixels
            self.filled[i] = 1
        return True

    def stored(self) -> int:
        return int(self.filled.sum())


def ram_store(paths: Sequence[str], side: int, workers: int = 1) -> Store:
    """A shared-memory store sized from the headers, empty until the loaders fill it. The pages
    are only taken when written, so a store that is never filled costs nothing."""
    started = time.perf_counter()
    shapes = _shapes(paths, side, workers)
    sizes = shapes.prod(axis=1) * 3
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    buffer = torch.empty(int(sizes.sum()), dtype=torch.uint8).share_memory_()
    filled = torch.zeros(len(paths), dtype=torch.uint8).share_memory_()
    store = Store(shapes, offsets, buffer, filled, "ram", writable=True)
    log.info(
        "data cache: RAM store for %d training images, %s (headers read in %.1f s); filled as the first epoch "
        "decodes them",
        len(paths),
        _mb(store.nbytes),
        time.perf_counter() - started,
    )
    return store


def disk_key(root: str, side: int) -> str:
    """Like the scan cache's key: the folder, what decides the pixels, and the format version."""
    key = f"{Path(root).expanduser().resolve()}|{side}|{CACHE_VERSION}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_index(path: Path, side: int, data_size: int) -> dict:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        index = {}
    valid = index.get("version") == CACHE_VERSION and index.get("side") == side
    if not valid or index.get("end", 0) > data_size:  # another format, or bytes lost: start over
        return {"version": CACHE_VERSION, "side": side, "end": 0, "entries": {}}
    return index


def disk_store(
    paths: Sequence[str], side: int, root: str, directory: Path = CACHE_DIR, workers: int = 1
) -> tuple[Store, dict[str, int]]:
    """Bring the memory-mapped store under `directory` up to date for `paths`, then map it.

    Entries are keyed by path and checked by (size, mtime): unchanged images are reused, new or
    changed ones decoded (with `workers` threads; Pillow releases the GIL while decoding) and
    written in place, or appended when their shape changed. An exclusive lock on the cache's
    .lock file makes concurrent runs and DDP ranks build it once and then share it.
    Returns the store and {"reused", "decoded", "failed"}.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = disk_key(root, side)
    data, index_file = directory / f"images-{key}.u8", directory / f"images-{key}.json"
    started = time.perf_counter()
    with open(directory / f"images-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        data.touch()
        index = _read_index(index_file, side, data.stat().st_size)
        entries = index["entries"]
        signatures = {p: _signature(p) for p in paths}
        todo = [p for p in paths if signatures[p] and (p not in entries or entries[p][3:] != signatures[p])]
        shapes = dict(zip(todo, _shapes(todo, side, workers).tolist(), strict=True))
        slots = {}
        for path in todo:
            old = entries.pop(path, None)  # stale either way
            h, w = shapes[path]
            if not h:
                continue
            if old is not None and old[1:3] == [h, w]:
                slots[path] = old[0]  # same shape: overwrite in place
            else:
                slots[path], index["end"] = index["end"], index["end"] + h * w * 3
        if index["end"] > data.stat().st_size:
            reserve(data, index["end"])
        failed = 0
        if slots:
            pixels = np.memmap(data, np.uint8, "r+", shape=(index["end"],))

            def write(path: str) -> bool:
                h, w = shapes[path]
                try:
                    image = np.asarray(base_image(path, side))
                except DECODE_ERRORS:
                    return False
                if image.shape != (h, w, 3):
                    return False
                pixels[slots[path] : slots[path] + h * w * 3] = image.reshape(-1)
                return True

            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                done = list(pool.map(write, slots))
            pixels.flush()
            del pixels
            for path, ok in zip(slots, done, strict=True):
                if ok:
                    entries[path] = [slots[path], *shapes[path], *signatures[path]]
                else:
                    failed += 1
            write_json(index_file, index, indent=None)
    counts = {"reused": len(paths) - len(todo), "decoded": len(slots) - failed, "failed": failed}
    present = [entries[p] if p in entries and entries[p][3:] == signatures[p] else None for p in paths]
    shapes_arr = np.array([e[1:3] if e else (0, 0) for e in present], dtype=np.int64).reshape(-1, 2)
    offsets = np.array([e[0] if e else 0 for e in present], dtype=np.int64)
    filled = torch.tensor([e is not None for e in present], dtype=torch.uint8)
    store = Store(shapes_arr, offsets, data, filled, "disk", writable=False)
    log.info(
        "data cache: %s for %d training images, %s: %d reused, %d decoded%s in %.1f s",
        data,
        len(paths),
        _mb(store.nbytes),
        counts["reused"],
        counts["decoded"],
        f", {failed} unreadable (decoded while training)" if failed else "",
        time.perf_counter() - started,
    )
    return store, counts


def reserve(data: Path, size: int) -> None:
    """Grow the store file to `size` bytes with the space allocated now: a sparse file would meet
    a full disk later, as SIGBUS in a loader worker writing into the mapping."""
    before = data.stat().st_size
    with diskspace.writing(data, "the data.cache=disk store", needed=size - before):
        fd = os.open(data, os.O_RDWR)
        try:
            os.posix_fallocate(fd, before, size - before)
        except OSError as exc:
            os.ftruncate(fd, before)  # as it was: the index still describes it
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # a file system without fallocate: sparse, as before
        finally:
            os.close(fd)


def _mb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
