"""Files written so that a reader (a resumed run, a sweep report, a W&B upload) never sees half of one.

Each write goes to a temporary file named after this process and is renamed into place: a rename is
atomic, and two processes writing the same file (ranks, sweep jobs sharing a scan cache) never
write into each other's temporary file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path


def temporary(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def write_text(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = temporary(path)
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json(path: Path, data, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str))


def csv_text(rows: Sequence[dict], fields: Sequence[str] | None = None, lineterminator: str = "\r\n") -> str:
    """csv's own dialect (CRLF, as in Lightning's metrics.csv); lineterminator="\n" for a terminal."""
    buffer = io.StringIO()
    header = list(fields if fields is not None else rows[0] if rows else [])
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, rows: Sequence[dict], fields: Sequence[str] | None = None) -> Path:
    """Rows of dicts as CSV; `fields` when the header is not the first row's keys."""
    return write_text(path, csv_text(rows, fields))
