"""Write real photos at phone-camera size: an image folder to bench decoding on.

    python scripts/make_phone_photos.py outputs/phone --train 80 --val 20
    python bench.py data.root=outputs/phone bench.compare=timm

Phones take 12-megapixel photos (4000x3000 JPEGs of 3-5 MB); a 224 px training crop needs a
fraction of those pixels, and how much of the file a loader decodes decides its speed
(docs/speed.md, "Reduced decoding"). This takes the hymenoptera photos (ants and bees, ~500 px),
resizes each (bicubic) to cover --size and centre-crops it to exactly that (so the aspect is
kept and every photo is the same size, landscape), and saves it as a JPEG of quality 90 under
<out>/train/<class>/ and <out>/val/<class>/. Upscaled photos are smoother than a camera's, so
they compress smaller than a real 12 MP photo (0.6-1.5 MB), but they decode the same way.
The photos are drawn per class with --seed, so the same arguments write the same folder.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

from PIL import Image, ImageOps

SOURCE = Path("/work/shared/datasets/hymenoptera")


def choose(source: Path, train: int, val: int, seed: int) -> dict[str, dict[str, list[Path]]]:
    """{part: {class: photos}}: `train` and `val` photos in all, split evenly over the classes,
    drawn with `seed` from every photo of the class (the source's train and val together), with
    no photo in both parts."""
    classes = sorted({p.name for part in ("train", "val") for p in (source / part).iterdir() if p.is_dir()})
    if not classes:
        raise SystemExit(f"{source}: no class folders under train/ or val/")
    rng = random.Random(seed)
    chosen: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    for i, name in enumerate(classes):
        # the first classes take the remainder, so the totals are exactly train and val
        n_train = train // len(classes) + (i < train % len(classes))
        n_val = val // len(classes) + (i < val % len(classes))
        photos = sorted(p for part in ("train", "val") for p in (source / part / name).glob("*.jp*g"))
        if n_train + n_val > len(photos):
            raise SystemExit(
                f"class {name} has {len(photos)} photos, fewer than {n_train} + {n_val}: ask for fewer"
            )
        picked = rng.sample(photos, n_train + n_val)
        chosen["train"][name], chosen["val"][name] = picked[:n_train], picked[n_train:]
    return chosen


def phone_size(path: Path, size: tuple[int, int]) -> Image.Image:
    """The photo upright, resized to cover `size` (width, height) and centre-cropped to it."""
    with Image.open(path) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    return ImageOps.fit(upright, size, Image.Resampling.BICUBIC)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the folder to write (replaced if it exists)")
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="hymenoptera: train/<class>/, val/<class>/"
    )
    parser.add_argument(
        "--train", type=int, default=80, help="training photos (split evenly over the classes)"
    )
    parser.add_argument(
        "--val", type=int, default=20, help="validation photos (split evenly over the classes)"
    )
    parser.add_argument(
        "--size", type=int, nargs=2, default=(4000, 3000), metavar=("WIDTH", "HEIGHT"), help="pixels"
    )
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    chosen = choose(args.source, args.train, args.val, args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    for part, classes in chosen.items():
        for name, photos in classes.items():
            folder = args.out / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for photo in photos:
                phone_size(photo, tuple(args.size)).save(folder / f"{photo.stem}.jpg", quality=args.quality)
    width, height = args.size
    print(
        f"{args.out}: {args.train} train, {args.val} val photos of {width}x{height} px, {len(chosen['train'])} classes"
    )


if __name__ == "__main__":
    main()
