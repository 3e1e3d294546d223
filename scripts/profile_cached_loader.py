"""Profile the cached epochs of effnet's training loader: what is left per image once the RAM store
holds every decoded image (issue 20, item 3). Run it under py-spy, then summarise the stacks:

    py-spy record --subprocesses --rate 400 --format raw -o cached.txt -- \
        python scripts/profile_cached_loader.py DATA_ROOT
    python scripts/profile_cached_loader.py --summarize cached.txt

This process fills the store first (one epoch with num_workers=0); the cached epochs then run in
one loader worker, as a run's do, and the summary reads only that worker's stacks: no decoding,
and none of the main process's per-sample seeding, which a worker does not need (effnet.data.dataset.seeded).
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
    filling = ImageDataModule(split, prep, level, micro_batch=batch, num_workers=0, cache="ram")
    filling.attach_store()
    started = time.perf_counter()
    for index in range(len(filling.train_set)):  # every image: a loader's drop_last would skip some
        filling.train_set[index]
    print(f"cold epoch, fills the store: {len(split.train) / (time.perf_counter() - started):.1f} img/s")
    dm = ImageDataModule(split, prep, level, micro_batch=batch, num_workers=1, cache="ram")
    dm.train_set.store = filling.train_set.store  # shared memory: the worker reads the filled store
    loader = dm.train_dataloader()
    for epoch in range(1, epochs + 1):
        dm.train_sampler.set_epoch(epoch)
        started, seen = time.perf_counter(), 0
        for images, _ in loader:
            seen += len(images)
        print(
            f"epoch {epoch} (cached, 1 worker): {seen / (time.perf_counter() - started):.1f} img/s",
            flush=True,
        )
    del loader  # end the persistent worker before the interpreter exits


def summarize(raw: str) -> None:
    """Shares of each step among the loader worker's samples (the cached epochs)."""
    rows = []
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if "_worker_loop" in stack:
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
