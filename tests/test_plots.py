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
