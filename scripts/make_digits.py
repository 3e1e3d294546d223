"""Write scikit-learn's bundled handwritten digits as an image folder far from ImageNet.

    python scripts/make_digits.py outputs/digits --size 96 --train 600 --val 300

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grayscale scans of handwritten digits (10
classes) inside the package, so no network is needed. Each is upscaled (bicubic) to --size pixels
and saved as a grayscale PNG under <root>/train/<digit>/ and <root>/val/<digit>/. The split is
stratified and seeded, so the same arguments always write the same folder. BENCHMARKS.md
("The backbone lr on data far from ImageNet") uses it to check the fine-tuning recipe, which was
tuned on photos (hymenoptera), on data that looks nothing like ImageNet.

scikit-learn is not one of effnet's dependencies; without it in the environment,
`pip install --target /tmp/sk scikit-learn joblib threadpoolctl narwhals` and run this script with
PYTHONPATH=/tmp/sk (training does not need it).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image


def split(targets: np.ndarray, train: int, val: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of a stratified train and val split: each class gets its share of both."""
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_train, n_val = round(train / len(classes)), round(val / len(classes))
        if n_train + n_val > len(idx):
            raise SystemExit(
                f"class {c} has {len(idx)} images, fewer than {n_train} + {n_val}: ask for fewer"
            )
        train_idx += idx[:n_train].tolist()
        val_idx += idx[n_train : n_train + n_val].tolist()
    return train_idx, val_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the folder to write (replaced if it exists)")
    parser.add_argument("--size", type=int, default=96, help="side of the written images, pixels")
    parser.add_argument(
        "--train", type=int, default=600, help="training images (split evenly over 10 classes)"
    )
    parser.add_argument(
        "--val", type=int, default=300, help="validation images (split evenly over 10 classes)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    digits = load_digits()
    train_idx, val_idx = split(digits.target, args.train, args.val, args.seed)
    if args.root.exists():
        shutil.rmtree(args.root)
    for part, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            # Pixel values are 0-16 (ink); scaled to 0-255 so the digit is white on black, as scanned.
            pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
            image = Image.fromarray(pixels).resize((args.size, args.size), Image.Resampling.BICUBIC)
            folder = args.root / part / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i:04d}.png")
    print(f"{args.root}: {len(train_idx)} train, {len(val_idx)} val images of {args.size} px, 10 classes")


if __name__ == "__main__":
    main()
