import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassF1Score, MulticlassPrecision

from effnet.metrics import most_confused, per_class, summarize

CLASSES = ["ant", "bee", "wasp"]


def _random_predictions(seed: int = 0, n: int = 200):
    g = torch.Generator().manual_seed(seed)
    true = torch.randint(0, 3, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.6, true, torch.randint(0, 3, (n,), generator=g))
    pred[pred == 2] = torch.where(true[pred == 2] == 1, 0, 2)  # make one pair clearly the worst
    return true, pred


def test_per_class_matches_torchmetrics():
    true, pred = _random_predictions()
    confmat = MulticlassConfusionMatrix(3)(pred, true)
    rows = per_class(confmat, CLASSES)
    f1 = MulticlassF1Score(3, average=None)(pred, true)
    precision = MulticlassPrecision(3, average=None)(pred, true)
    assert [r["f1"] for r in rows] == pytest.approx(f1.tolist(), abs=1e-6)
    assert [r["precision"] for r in rows] == pytest.approx(precision.tolist(), abs=1e-6)
    assert [r["support"] for r in rows] == torch.bincount(true, minlength=3).tolist()


def test_summary_accuracy_and_macro_f1():
    true, pred = _random_predictions(1)
    confmat = MulticlassConfusionMatrix(3)(pred, true)
    summary = summarize(confmat, CLASSES)
    assert summary["images"] == len(true)
    assert summary["top1"] == pytest.approx((pred == true).float().mean().item())
    assert summary["macro_f1"] == pytest.approx(
        MulticlassF1Score(3, average="macro")(pred, true).item(), abs=1e-6
    )


def test_most_confused_orders_off_diagonal_cells():
    confmat = np.array([[5, 7, 0], [1, 9, 3], [0, 0, 4]])
    pairs = most_confused(confmat, CLASSES, k=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        ("ant", "bee", 7),
        ("bee", "wasp", 3),
        ("bee", "ant", 1),
    ]


def test_class_never_predicted_has_zero_precision():
    rows = per_class(np.array([[3, 0], [2, 0]]), ["a", "b"])
    assert rows[1]["precision"] == 0.0 and rows[1]["recall"] == 0.0 and rows[1]["f1"] == 0.0


def test_mismatched_names_rejected():
    with pytest.raises(ValueError, match="2 class names"):
        per_class(np.eye(3), ["a", "b"])
