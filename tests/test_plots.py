import numpy as np
from PIL import Image

from effnet.plots import confusion_matrix_png, prediction_order, predictions_png


def test_confusion_matrix_png_is_an_image(tmp_path):
    path = confusion_matrix_png(np.array([[4, 1], [2, 3]]), ["ant", "bee"], tmp_path / "cm.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height > 300  # two panels side by side
    assert not list(tmp_path.glob("*.tmp"))


def test_predictions_png_grid(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (10, 3, 32, 32), dtype=np.uint8)
    true = [0, 1] * 5
    pred = [0, 0] * 5
    path = predictions_png(images, true, pred, [0.9] * 10, ["ant", "bee"], tmp_path / "p.png", columns=5)
    with Image.open(path) as image:
        assert image.size == (1000, 460)  # 5 columns x 2 rows at 2.0 x 2.3 inches, 100 dpi


def test_mistakes_come_first_most_confident_leading():
    order = prediction_order(true=[0, 1, 1, 0], pred=[0, 0, 0, 0], confidence=[0.99, 0.6, 0.8, 0.7])
    assert order == [2, 1, 3, 0]


def test_class_names_are_drawn_whatever_their_script_and_length(tmp_path, recwarn):
    """No "Glyph missing" boxes: a character no installed font holds is shown as its code point,
    a long name keeps its start and end, look-alikes get their index; tables keep full names."""
    from effnet.plots import MAX_LABEL, figure_labels

    names = ["café", "猫", "Northern_cardinal_adult_female_eastern", "Northern_cardinal_adult_female_western"]
    labels, families = figure_labels(names)
    assert labels[0] == "café" and families[0] == "DejaVu Sans"
    assert (
        labels[1] == "猫" if len(families) > 1 else labels[1] == "U+732B"
    )  # a CJK font, where one is installed
    assert labels[2] != labels[3] and all(len(label) <= MAX_LABEL for label in labels[2:])
    assert labels[2].startswith("Northern_cardin") and labels[2].endswith("eastern") and "…" in labels[2]
    assert figure_labels(["x" * 30, "x" * 31])[0] == [
        "x" * 15 + "…" + "x" * 8 + " [0]",
        "x" * 15 + "…" + "x" * 8 + " [1]",
    ]
    confusion_matrix_png(np.eye(4, dtype=int), names, tmp_path / "cm.png")
    predictions_png(np.zeros((2, 3, 8, 8), np.uint8), [0, 1], [1, 0], [0.6, 0.7], names, tmp_path / "p.png")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
