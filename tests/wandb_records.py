"""Read back what an offline W&B run wrote, from its own .wandb file (no W&B server, no wandb API).

wandb 0.31 no longer ships a reader for its run files. The format is LevelDB's log: a 7-byte file
header (b":W&B", magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC32 of type byte + payload, payload length, type: FULL, or FIRST/MIDDLE/LAST pieces of one
record). Block tails too short for a chunk header are zero padding. Each record is wandb's own
protobuf `Record` (wandb.proto.wandb_internal_pb2), so this reads exactly what `wandb sync` uploads.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    """Every record in the file, checksums verified, split records joined."""
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B run file (header {ident!r} {magic:#x} {version})")
    records, pending, pos = [], None, FILE_HEADER.size
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER.size:  # padding at the end of a block
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero fill: the writer has not got further
            break
        payload = data[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad checksum at byte {pos}")
        pos += CHUNK_HEADER.size + length
        if kind == FULL:
            whole = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        else:
            whole, pending = pending + payload, None
        record = pb.Record()
        record.ParseFromString(whole)
        records.append(record)
    return records


def _apply(items, into: dict) -> dict:
    """Set each item's JSON value at its key path: wandb splits nested values (media) into leaves."""
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = into
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = json.loads(item.value_json)
    return into


@dataclass
class OfflineRun:
    """The parts of a run a dashboard shows: identity, config, history rows, summary, media files."""

    path: Path
    run: pb.RunRecord = None
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def files(self) -> Path:
        return self.path.parent / "files"

    def media(self, value: dict) -> Path:
        """The file a history/summary media entry ({"_type": ..., "path": ...}) points to."""
        return self.files / value["path"]


def read_run(path: Path) -> OfflineRun:
    """An offline run from its .wandb file (or from its offline-run-* folder)."""
    path = Path(path)
    if path.is_dir():
        (path,) = path.glob("*.wandb")
    run = OfflineRun(path)
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
            _apply(record.run.config.update, run.config)
        elif kind == "config":
            _apply(record.config.update, run.config)
        elif kind == "history":
            run.history.append(_apply(record.history.item, {}))
        elif kind == "summary":
            _apply(record.summary.update, run.summary)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def finished_run(path: Path, timeout: float = 60.0) -> OfflineRun:
    """read_run once the exit record is there: wandb's service process writes the file after
    finish() returns, so a reader in the same process can be ahead of it for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_run(path)
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def offline_runs(folder: Path) -> list[OfflineRun]:
    """Every finished offline run under a folder (a run folder, or a whole sweep), oldest first."""
    return [finished_run(p) for p in sorted(Path(folder).rglob("offline-run-*/run-*.wandb"))]
