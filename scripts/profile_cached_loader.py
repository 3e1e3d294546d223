"""Profile the cached epochs of effnet's training loader: what is left per image once the RAM store
holds every decoded image (issue 20, item 3). Run it under py-spy, then summarise the stacks:

    py-spy record --format raw -o cached.txt -- python scripts/profile_cached_loader.py DATA_ROOT
    python scripts/profile_cached_loader.py --summarize cached.txt

The loader runs in this process (num_workers=0) so that py-spy sees its work; the first epoch fills
the store and its decoding is left out of the summary.
"""

from __future__ import annotations

import argparse
import collections
import time

# The steps of a cached sample, by a frame each one's stack holds (qualified names, as py-spy
# gives them). The light and standard levels cut and jitter tensors; heavy cuts with Pillow.
STEPS = {
    "crop + resize (the box, effnet.data.crop.cut)": "SourceCrop.__call__",
    "colour jitter on the tensor (TensorJitter)": "TensorJitter.__call__",
    "colour jitter on PIL (torchvision ColorJitter)": "ColorJitter.forward",
    "flip": "RandomHorizontalFlip.forward",
    "PIL to uint8 tensor": "pil_to_tensor",
    "store read": "ImageList._image",
    "collate": "collate",
    "seeding": "seed_all",
}


def run(root: str, epochs: int, image_size: int, aug: str, batch: int) -> None:
    import torch
    from omegaconf import OmegaConf

    from effnet import CONF_DIR
    from effnet.data import folders
    from effnet.data.datamodule import ImageDataModule
    from effnet.preprocessing import Preprocessing

    torch.set_num_threads(1)
    split = folders.discover(root, 0.2, 0)
    level = OmegaConf.load(CONF_DIR / "train.yaml").augment[aug]
    prep = Preprocessing(image_size, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    dm = ImageDataModule(split, prep, level, micro_batch=batch, num_workers=0, cache="ram")
    loader = dm.train_dataloader()
    for epoch in range(epochs + 1):
        dm.train_sampler.set_epoch(epoch)
        started, seen = time.perf_counter(), 0
        for images, _ in loader:
            seen += len(images)
        kind = "cold, fills the store" if epoch == 0 else "cached"
        print(f"epoch {epoch} ({kind}): {seen / (time.perf_counter() - started):.1f} img/s", flush=True)


def summarize(raw: str) -> None:
    """Shares of each step among the samples inside the cached epochs' DataLoader.__next__."""
    rows = []
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if "__next__" in stack and "base_image" not in stack:  # not the first epoch's decoding
                rows.append(([frame.split(" (")[0] for frame in stack.split(";")], int(count)))
    total = sum(n for _, n in rows) or 1
    print(f"{total} samples in the cached epochs")
    for step, frame in STEPS.items():
        n = sum(c for frames, c in rows if any(frame in x for x in frames))
        print(f"  {100 * n / total:5.1f}%  {step}")
    own = collections.Counter()
    for frames, c in rows:
        own[frames[-1]] += c
    print("own time, top 10:")
    for name, n in own.most_common(10):
        print(f"  {100 * n / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", nargs="?", help="image folder (class folders, or train/ and val/)")
    parser.add_argument("--epochs", type=int, default=4, help="cached epochs after the cold one")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--aug", default="standard", help="light | standard | heavy")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--summarize", metavar="RAW", help="summarise py-spy's raw output instead of running")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
    elif args.root:
        run(args.root, args.epochs, args.image_size, args.aug, args.batch)
    else:
        parser.error("give an image folder, or --summarize RAW")


if __name__ == "__main__":
    main()
