"""Score a trained model on labelled images: the numbers, the confusion matrix and the mistakes.

A checkpoint is scored on its own run's saved split (the images it was validated on), so the
result matches training; another data.root is matched to the model's classes by name. The same
scoring serves export.py, where it measures what each exported file really gets right.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from effnet import metrics, plots
from effnet.data import folders
from effnet.data.folders import Sample
from effnet.deploy.predict import Predictor, infer, softmax
from effnet.errors import UserError
from effnet.files import write_csv, write_json

log = logging.getLogger("effnet")

SPLITS = ("val", "test", "train")


@dataclass
class Scored:
    """Logits of the readable images, their labels, and the report computed from them."""

    samples: list[Sample]
    logits: np.ndarray
    labels: np.ndarray
    skipped: dict[str, str]
    report: dict


def score(logits: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """top-1/top-5 and everything metrics.summarize derives from the confusion matrix."""
    preds, target = torch.from_numpy(logits), torch.from_numpy(labels)
    n = len(classes)
    confmat = multiclass_confusion_matrix(preds, target, num_classes=n)
    report = metrics.summarize(confmat, classes)
    report["top5"] = (
        float(multiclass_accuracy(preds, target, n, top_k=5, average="micro")) if n >= 5 else None
    )
    report["confusion_matrix"] = confmat.tolist()
    return report


def score_samples(
    predictor: Predictor, samples: list[Sample], batch_size: int, num_workers, tta: bool = False
) -> Scored:
    if not samples:
        raise UserError("no labelled images to evaluate")
    paths = [p for p, _ in samples]
    logits, skipped = infer(predictor, paths, batch_size, num_workers, tta, description="evaluate")
    ok = [i for i in range(len(samples)) if i not in skipped]
    if not ok:
        raise UserError(
            f"none of the {len(samples)} images could be read; first error: {next(iter(skipped.values()))}"
        )
    labels = np.array([samples[i][1] for i in ok], dtype=np.int64)
    return Scored(
        samples=[samples[i] for i in ok],
        logits=logits[ok],
        labels=labels,
        skipped={paths[i]: why for i, why in skipped.items()},
        report=score(logits[ok], labels, predictor.classes),
    )


def find_run_dir(model_path: Path, levels: int = 4) -> Path | None:
    """The training run a model file came from: the nearest folder above it holding split.json."""
    for folder in list(model_path.parents)[:levels]:
        if (folder / folders.SPLIT_FILE).is_file():
            return folder
    return None


def _same_folder(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def uses_saved_split(data_root: str | None, saved: folders.Split | None) -> bool:
    """data.root unset, or the run's own data: the run's saved split answers, no folder is walked."""
    return data_root is None or (saved is not None and _same_folder(data_root, saved.root))


def labelled_samples(
    data_root: str | None,
    split_name: str,
    classes: list[str],
    run_dir: Path | None,
    val_fraction: float,
    seed: int,
    found: folders.Split | None = None,
) -> tuple[list[Sample], str]:
    """The images to score and where they came from.

    data.root unset, or the run's own data: the run's saved split. Another folder: its own
    val/ or test/ folder, or every image when it is one folder of classes; labels are mapped to
    the model's classes by name. `found`: that folder's split, when the command has drawn it.
    """
    saved = folders.load_split(run_dir) if run_dir is not None else None
    if uses_saved_split(data_root, saved):
        if saved is None:
            raise UserError(
                "no split.json next to the model (it is saved in the training run folder); "
                "pass data.root=<folder of class subfolders> to evaluate on"
            )
        if saved.classes != classes:
            raise UserError(f"{run_dir}/{folders.SPLIT_FILE}: its classes differ from the model's")
        samples = getattr(saved, split_name)
        if not samples:
            raise UserError(f"split={split_name}: the run's split has no {split_name} images")
        return samples, f"{saved.root} ({split_name} split saved in {run_dir})"

    found = found or folders.discover(data_root, val_fraction, seed)
    unknown = sorted(set(found.classes) - set(classes))
    if unknown:
        raise UserError(
            f"data.root={data_root}: class(es) {', '.join(unknown)} are not known to the model "
            f"(it knows: {', '.join(classes)}); remove them or evaluate a model trained on them"
        )
    if split_name == "test":
        chosen, what = found.test, "test/ folder"
    elif found.held_out:
        chosen, what = found.train + found.val, "every image"
    else:
        chosen, what = (
            (found.val, "validation folder") if split_name == "val" else (found.train, "train/ folder")
        )
    if not chosen:
        raise UserError(f"data.root={data_root} split={split_name}: no images in its {what}")
    index = {c: classes.index(c) for c in found.classes}
    return [(p, index[found.classes[y]]) for p, y in chosen], f"{found.root} ({what})"


def write_confusion_csv(confmat: list[list[int]], classes: list[str], path: Path) -> None:
    header = ["true \\ predicted", *classes]
    rows = [dict(zip(header, [name, *row], strict=True)) for name, row in zip(classes, confmat, strict=True)]
    write_csv(path, rows, header)


def write_predictions_csv(scored: Scored, classes: list[str], path: Path) -> None:
    rows = []
    for (p, y), row in zip(scored.samples, softmax(scored.logits), strict=True):
        pred = int(row.argmax())
        rows.append(
            {
                "path": p,
                "true": classes[y],
                "predicted": classes[pred],
                "confidence": f"{row[pred]:.6f}",
                "correct": int(pred == y),
            }
        )
    write_csv(path, rows, ["path", "true", "predicted", "confidence", "correct"])


def misclassified_png(scored: Scored, predictor: Predictor, path: Path, limit: int) -> Path | None:
    """The most confident mistakes, as the model saw them (after resize and crop)."""
    probs = softmax(scored.logits)
    pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = [i for i in np.argsort(-confidence, kind="stable") if pred[i] != scored.labels[i]][:limit]
    if not wrong:
        return None
    from effnet.deploy.predict import ImageFiles

    images = ImageFiles([scored.samples[i][0] for i in wrong], predictor.prep)
    return plots.predictions_png(
        [images[j][1] for j in range(len(wrong))],
        [int(scored.labels[i]) for i in wrong],
        [int(pred[i]) for i in wrong],
        [float(confidence[i]) for i in wrong],
        predictor.classes,
        path,
    )


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "n/a" if v is None else f"{v:.2%}"

    console = Console()
    head = Table(title=f"effnet eval: {result['model']}", show_header=False, title_justify="left")
    for key, value in (
        (
            "images",
            f"{result['images']} ({result['data']})"
            + (f", {len(result['skipped'])} unreadable" if result["skipped"] else ""),
        ),
        ("top-1", pct(result["top1"])),
        ("top-5", pct(result["top5"])),
        (
            "macro precision / recall / F1",
            " / ".join(pct(result[k]) for k in ("macro_precision", "macro_recall", "macro_f1")),
        ),
        (
            "most confused",
            ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in result["most_confused"])
            or "none",
        ),
        ("written to", result["out_dir"]),
    ):
        head.add_row(key, value)
    console.print(head)
    per = Table("class", "precision", "recall", "F1", "support", title_justify="left")
    for row in result["per_class"]:
        per.add_row(
            row["class"], pct(row["precision"]), pct(row["recall"]), pct(row["f1"]), str(row["support"])
        )
    console.print(per)


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    """eval.py: score a checkpoint (or exported model) and write eval.json and pictures into out_dir."""
    from effnet.deploy.paths import model_file
    from effnet.deploy.predict import load_predictor

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = model_file(str(cfg.ckpt))
    predictor = load_predictor(str(model_path))
    samples, source = labelled_samples(
        cfg.data.root, cfg.split, predictor.classes, find_run_dir(model_path), cfg.data.val_fraction, cfg.seed
    )
    scored = score_samples(predictor, samples, cfg.batch_size, cfg.num_workers, cfg.tta)
    for path, why in scored.skipped.items():
        log.warning("skipped %s: %s", path, why)
    classes = predictor.classes
    report = scored.report
    write_confusion_csv(report["confusion_matrix"], classes, out_dir / "confusion_matrix.csv")
    plots.confusion_matrix_png(
        np.array(report["confusion_matrix"]), classes, out_dir / "confusion_matrix.png"
    )
    write_predictions_csv(scored, classes, out_dir / "predictions.csv")
    grid = misclassified_png(scored, predictor, out_dir / "misclassified.png", cfg.misclassified)
    result = {
        "model": str(model_path),
        "model_kind": predictor.name,
        "split": cfg.split,
        "data": source,
        "tta": bool(cfg.tta),
        "classes": classes,
        **report,
        "skipped": scored.skipped,
        "misclassified_png": str(grid) if grid else None,
        "out_dir": str(out_dir),
    }
    write_json(out_dir / "eval.json", result)
    print_report(result)
    return result
