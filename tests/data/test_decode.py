"""Decoding: reduced JPEG scale, EXIF orientation, every mode to RGB."""

from PIL import Image

from effnet.data.decode import load_rgb


def test_large_jpegs_decode_reduced_but_not_below_the_size_needed(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1500), "red").save(path)
    img = load_rgb(str(path), min_size=300)
    assert img.mode == "RGB" and 300 <= min(img.size) < 1500


def test_exif_rotation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), "blue")
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_rgb(str(path), 100).size == (20, 40)


def test_grayscale_and_rgba_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        Image.new(mode, (30, 30)).save(tmp_path / f"{mode}.png")
        assert load_rgb(str(tmp_path / f"{mode}.png"), 10).mode == "RGB"
