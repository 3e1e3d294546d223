"""What a confusion matrix says about a classifier: per-class precision/recall/F1 and the worst mix-ups.

Everything here works from the (true x predicted) count matrix that torchmetrics has already
reduced across processes, so training, evaluation and export all report the same numbers the
same way, without a second pass over the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The per-epoch metrics a training run logs (effnet.training.module and .callbacks), by the names
# train.monitor takes; val/acc5 only with TOP5_MIN_CLASSES classes or more.
LOGGED = (
    "val/acc",
    "val/loss",
    "val/f1",
    "val/acc5",
    "train/loss_epoch",
    "train/acc",
    "train/images_per_sec",
    "train/data_wait",
)
TOP5_MIN_CLASSES = 5  # effnet.training.module logs val/acc5 from here on
MONITOR_MODES = ("auto", "max", "min")


def monitor_mode(monitor: str, mode: str) -> str:
    """max or min: `mode` itself, or for auto min for a loss and max for everything else."""
    if mode != "auto":
        return mode
    return "min" if "loss" in monitor else "max"


def _as_counts(confmat) -> np.ndarray:
    counts = np.asarray(confmat.detach().cpu() if hasattr(confmat, "detach") else confmat, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {counts.shape}")
    return counts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den with 0 where den is 0: a class never predicted has precision 0, as in torchmetrics."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def per_class(confmat, classes: Sequence[str]) -> list[dict]:
    """One row per class: precision, recall, F1 and support (the number of true images)."""
    counts = _as_counts(confmat)
    if len(classes) != len(counts):
        raise ValueError(f"{len(classes)} class names for a {len(counts)}-class confusion matrix")
    hits = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    precision = _ratio(hits, counts.sum(axis=0).astype(np.float64))
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


def most_confused(confmat, classes: Sequence[str], k: int = 5) -> list[dict]:
    """The k largest off-diagonal cells: which true class is most often called which other class."""
    counts = _as_counts(confmat).copy()
    np.fill_diagonal(counts, 0)
    order = np.argsort(counts, axis=None, kind="stable")[::-1]
    pairs = []
    for flat in order[:k]:
        true, pred = np.unravel_index(flat, counts.shape)
        if counts[true, pred] == 0:
            break
        pairs.append({"true": classes[true], "predicted": classes[pred], "count": int(counts[true, pred])})
    return pairs


def summarize(confmat, classes: Sequence[str], k: int = 5) -> dict:
    """Accuracy, macro precision/recall/F1, the per-class table and the worst mix-ups, as plain JSON."""
    counts = _as_counts(confmat)
    rows = per_class(counts, classes)
    total = int(counts.sum())
    return {
        "images": total,
        "top1": float(np.trace(counts) / total) if total else 0.0,
        "macro_precision": float(np.mean([r["precision"] for r in rows])),
        "macro_recall": float(np.mean([r["recall"] for r in rows])),
        "macro_f1": float(np.mean([r["f1"] for r in rows])),
        "per_class": rows,
        "most_confused": most_confused(counts, classes, k),
    }
