"""One pixel limit for the scan, training's loaders, eval and predict: an image whose header
declares more pixels is refused before a pixel is decoded, in one line, with no warning of Pillow's."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from effnet.data import pixels, scan
from effnet.data.decode import load_rgb
from effnet.data.sources import ImageFile
from tests.helpers import compose_cfg, make_images

SIDE = 12_000  # 144 megapixels: ~2 GB decoded as RGB, 140 kB as a file


def bomb_png(path: Path, side: int = SIDE) -> Path:
    """A real, valid, all-black grayscale PNG of side x side pixels, compressed row by row so that
    writing it never holds the image in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's pixels
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return bomb_png(tmp_path_factory.mktemp("bomb") / "huge.png")


def test_the_config_default_is_the_one_limit():
    for overrides in ([], ["data=demo"]):
        assert compose_cfg(["data.root=/x", *overrides]).data.max_image_pixels == pixels.MAX_IMAGE_PIXELS


def test_every_decoder_refuses_the_same_image_before_decoding_it(bomb, recwarn):
    expected = (
        f"too many pixels: {SIDE}x{SIDE} = 144,000,000 > data.max_image_pixels=100,000,000 "
        "(decompression bomb?); not decoded"
    )
    started = time.perf_counter()
    assert scan.check_image(str(bomb), pixels.MAX_IMAGE_PIXELS).reason == expected  # the data scan
    with pytest.raises(
        pixels.TooManyPixels, match=expected.replace("?", r"\?").replace("(", r"\(").replace(")", r"\)")
    ):
        load_rgb(str(bomb), 224)  # the data cache, eval, predict
    with pytest.raises(pixels.TooManyPixels, match="too many pixels"):
        ImageFile(str(bomb))  # training's loaders, which decode at the scale each crop needs
    from effnet.deploy.predict import ImageFiles
    from effnet.preprocessing import Preprocessing

    _, image, reason = ImageFiles([bomb], Preprocessing(32, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3))[0]
    assert image is None and reason == f"TooManyPixels: {expected}"
    assert time.perf_counter() - started < 5, "refused from the header, not decoded"
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    with Image.open(bomb) as img:  # and it is a real image: under a higher limit it would decode
        pixels.check(img, SIDE * SIDE)


def test_predict_skips_an_image_over_the_limit_in_one_line(trained_run, bomb, tmp_path, capsys, recwarn):
    from effnet.deploy import predict

    inbox = make_images(tmp_path / "inbox", {"a": 2})
    (inbox / "huge.png").symlink_to(bomb)
    predict.predict(
        compose_cfg(
            [f"ckpt={trained_run}", f"inputs={inbox}", "out=-", "num_workers=0"], config_name="predict"
        )
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == (
        f"effnet: skipped {inbox / 'huge.png'}: TooManyPixels: too many pixels: {SIDE}x{SIDE} = 144,000,000 > "
        "data.max_image_pixels=100,000,000 (decompression bomb?); not decoded"
    )
    assert lines[1].startswith("effnet: predicted 2 image(s)") and "skipped 1" in lines[1]
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
