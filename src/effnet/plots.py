"""Pictures a person judges a model by, drawn to PNG with no display and no account.

matplotlib is imported inside each function (through its object API, not pyplot's global state)
so that importing effnet stays fast and plots are safe from worker threads and processes.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from effnet import diskspace
from effnet.files import temporary

# Cell numbers stop being readable past this many classes; the colours still are.
MAX_ANNOTATED_CLASSES = 25
# Characters of a class name shown in a figure: longer ones lose their middle to an ellipsis
# (the tables, eval.json and per_class.csv keep every name whole).
MAX_LABEL = 24
DEFAULT_FONT = "DejaVu Sans"  # matplotlib's own, always there


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):  # a font file FreeType cannot read
        return frozenset()


@functools.cache
def _installed_fonts() -> tuple[tuple[str, str], ...]:
    """(family, file) of every font matplotlib knows, its default first."""
    from matplotlib import font_manager

    fonts = [(DEFAULT_FONT, font_manager.findfont(DEFAULT_FONT))]
    fonts += sorted(
        {(f.name, f.fname) for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")}
        - set(fonts)
    )  # Last Resort "holds" every character as a box naming its Unicode block: no help to a reader
    return tuple(fonts)


def figure_labels(classes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the class names as a figure shows them, the font families to draw them with).

    The families are matplotlib's default plus, in order, any installed font holding a character
    it lacks (CJK, emoji: a Noto font, where one is installed), so that names are drawn, not
    boxes with a "Glyph missing" warning. A character no installed font holds is shown as its
    code point (U+732B); a name longer than MAX_LABEL keeps its start and end around an ellipsis.
    Names that would then look alike get their class index."""
    fonts = _installed_fonts()
    families = [DEFAULT_FONT]
    covered = set(_charmap(fonts[0][1]))
    for ch in {ch for name in classes for ch in name if ord(ch) not in covered}:
        if ord(ch) in covered:
            continue  # a font added for an earlier character holds it
        match = next(((fam, path) for fam, path in fonts[1:] if ord(ch) in _charmap(path)), None)
        if match is not None:
            families.append(match[0])
            covered |= _charmap(match[1])
    labels = [_short("".join(ch if ord(ch) in covered else _spelt(ch) for ch in name)) for name in classes]
    seen = Counter(labels)
    labels = [f"{label} [{i}]" if seen[label] > 1 else label for i, label in enumerate(labels)]
    return labels, families


def _spelt(ch: str) -> str:
    """A character no font can draw: its letters without accents where that helps, else U+XXXX."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return plain if plain.isascii() and plain.strip() else f"U+{ord(ch):04X}"


def _short(label: str) -> str:
    if len(label) <= MAX_LABEL:
        return label
    head = (MAX_LABEL - 1) * 2 // 3
    return label[:head] + "…" + label[-(MAX_LABEL - 1 - head) :]


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    tmp = temporary(path)
    with diskspace.writing(path, "the figure", remove=[tmp]):  # no half PNG left on a full disk
        path.parent.mkdir(parents=True, exist_ok=True)
        # zlib level 1: a grid of photos encodes 3-4x faster than at Pillow's default 6 and is ~10%
        # larger; it is drawn after validation, on the training process's time (BENCHMARKS.md)
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": 1})
        tmp.replace(path)  # a reader (or a W&B upload) never sees half a PNG
    return path


def _matrix_panel(ax, values: np.ndarray, classes: Sequence[str], title: str, fmt: str) -> None:
    n = len(classes)
    labels, families = figure_labels(classes)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9))
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right", fontsize=8, family=families)
    ax.set_yticks(range(n), labels=labels, fontsize=8, family=families)
    if n <= MAX_ANNOTATED_CLASSES:
        threshold = values.max() / 2
        for i in range(n):
            for j in range(n):
                colour = "white" if values[i, j] > threshold else "black"
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", color=colour, fontsize=7)


def confusion_matrix_png(confmat, classes: Sequence[str], path: Path) -> Path:
    """Counts beside row-normalised rates (recall on the diagonal), class names on both axes."""
    counts = np.asarray(confmat.detach().cpu() if hasattr(confmat, "detach") else confmat, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = min(4 + 0.45 * len(classes), 14)
    fig = _figure(2 * side + 1, side)
    left, right = fig.subplots(1, 2)
    _matrix_panel(left, counts, classes, f"counts ({int(counts.sum())} images)", "d")
    _matrix_panel(right, rates, classes, "normalised by true class", ".2f")
    return _save(fig, path)


def _hwc(image) -> np.ndarray:
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array.squeeze(-1) if array.shape[-1] == 1 else array


def prediction_order(true: Sequence[int], pred: Sequence[int], confidence: Sequence[float]) -> list[int]:
    """Misclassified first, most confident mistakes leading; then correct ones, least confident first."""
    return sorted(
        range(len(true)),
        key=lambda i: (true[i] == pred[i], -confidence[i] if true[i] != pred[i] else confidence[i]),
    )


def _tiles(count: int, columns: int, heading: bool = False):
    """A figure of `count` image tiles, `columns` to a row at most (2.0 x 2.3 inches a tile: room
    for a two-line title), every axis off; returns it and its axes, row by row."""
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    # A fixed grid, not constrained layout: every tile and title has the same size, and laying out
    # 16 tiles' tick-less axes cost more than drawing them (0.8 s of a 1.1 s figure, drawn each epoch).
    margin, title = 0.05, 0.42  # inches: the edge, and two lines of 8 pt above each tile
    top = margin + (0.3 if heading else 0)  # a suptitle's line of 9 pt
    width, height = 2.0 * columns, 2.3 * rows
    fig = _figure(width, height, layout=None)
    axes = fig.subplots(
        rows,
        columns,
        squeeze=False,
        gridspec_kw={
            "left": margin / width,
            "right": 1 - margin / width,
            "bottom": margin / height,
            "top": 1 - (top + title) / height,
            "wspace": 0.05,
            "hspace": title / (2.3 - title),
        },
    ).ravel()
    for ax in axes:
        ax.set_axis_off()
    return fig, axes


def predictions_png(
    images,
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    classes: Sequence[str],
    path: Path,
    columns: int = 8,
) -> Path:
    """A grid of images titled true/predicted/confidence, mistakes in red and first."""
    order = prediction_order(true, pred, confidence)
    labels, families = figure_labels(classes)
    fig, axes = _tiles(len(order), columns)
    for ax, i in zip(axes, order, strict=False):  # the last row may have spare axes
        ax.imshow(_hwc(images[i]))
        wrong = true[i] != pred[i]
        ax.set_title(
            f"true {labels[true[i]]}\npred {labels[pred[i]]} {confidence[i]:.0%}",
            fontsize=8,
            family=families,
            color="tab:red" if wrong else "tab:green",
        )
    return _save(fig, path)


def batch_png(
    images,
    labels: Sequence[int],
    classes: Sequence[str],
    path: Path,
    title: str = "",
    columns: int = 8,
) -> Path:
    """A grid of training images (uint8) as the network sees them, each titled with its class."""
    names, families = figure_labels(classes)
    fig, axes = _tiles(len(labels), columns, heading=bool(title))
    for ax, image, label in zip(axes, images, labels, strict=False):  # the last row may have spare axes
        ax.imshow(_hwc(image))
        ax.set_title(names[label], fontsize=8, family=families)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def lr_find_png(
    lrs: Sequence[float],
    losses: Sequence[float],
    suggested: int | None,
    path: Path,
    title: str = "",
    axis: str = "learning rate",
) -> Path:
    """The learning-rate finder's loss (smoothed) against the lr of each step, on a log axis; the
    suggestion (index `suggested`: the steepest fall) marked in red."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    ax.plot(lrs, losses, color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    if suggested is not None:
        lr = lrs[suggested]
        ax.plot(
            [lr],
            [losses[suggested]],
            marker="o",
            markersize=10,
            color="tab:red",
            label=f"suggested lr {lr:.2g}",
        )
        ax.axvline(lr, color="tab:red", linestyle="--", linewidth=1)
        ax.legend(fontsize=8)
    finite = [v for v in losses if math.isfinite(v)]
    if len(finite) > 1:  # the blow-up at the end would flatten the fall that matters
        low, first = min(finite), finite[0]
        top = min(max(finite), 2 * first - low) if first > low else max(finite)
        margin = 0.05 * (top - low) or 0.05
        ax.set_ylim(low - margin, top + margin)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


# curves.png panels: (title, [(history key, legend label)]); a key a run never logged is left out.
CURVE_PANELS = (
    ("loss", [("train/loss_epoch", "train"), ("val/loss", "val")]),
    (
        "accuracy",
        [
            ("train/acc", "train top-1"),
            ("val/acc", "val top-1"),
            ("val/acc5", "val top-5"),
            ("val/f1", "val macro F1"),
        ],
    ),
    ("learning rate", [("lr", "lr")]),
)


def curves_png(history: Sequence[dict], path: Path, best_epoch: int | None = None) -> Path:
    """Loss, accuracy and learning rate per epoch (1-based), the best epoch marked."""
    fig = _figure(15, 4)
    axes = fig.subplots(1, len(CURVE_PANELS))
    for ax, (title, series) in zip(axes, CURVE_PANELS, strict=True):
        for key, label in series:
            points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if best_epoch is not None:
            ax.axvline(
                best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})"
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    if history and all((row.get("lr") or 0) > 0 for row in history):
        axes[-1].set_yscale("log")  # warmup and cosine decay span decades
    return _save(fig, path)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_vs_params_png(
    rows: Sequence[dict], params: Sequence[str], metric: str, path: Path, best: dict | None = None
) -> Path:
    """One panel per swept parameter: the metric of every job against that parameter's value.

    Numbers go on a numeric axis (log when they span more than a decade, as learning rates do);
    anything else (model names, aug levels) is one column per value. The best job is a red star.
    """
    params = list(params) or ["job"]
    fig = _figure(4.5 * len(params), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(params)))
    scored = [r for r in rows if _is_number(r.get(metric))]
    for ax, param in zip(axes, params, strict=True):
        values = [r.get(param) for r in scored]
        numeric = all(_is_number(v) for v in values)
        if numeric:
            positions = values
            positive = [v for v in values if v > 0]
            if len(positive) == len(values) and values and max(values) / min(values) > 10:
                ax.set_xscale("log")
        else:
            labels = sorted({str(v) for v in values})
            positions = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", fontsize=8)
        ax.scatter(positions, [r[metric] for r in scored], alpha=0.7)
        if best is not None and best in scored:
            i = scored.index(best)
            ax.scatter([positions[i]], [best[metric]], marker="*", s=200, color="tab:red", label="best")
            ax.legend(fontsize=8)
        ax.set_xlabel(param)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    return _save(fig, path)
