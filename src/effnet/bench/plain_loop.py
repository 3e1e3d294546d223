"""A plain timm + torch training loop: the reference for effnet's framework overhead.

The same files, model, micro-batch, augmentation (timm's transform, uint8 out, normalised on the
device), workers and precision as an effnet run, and none of the framework (no Lightning, logging,
metrics, schedule or checkpoints). `python bench.py ... bench.compare=plain` runs it on the bench's
images; alone: python -m effnet.bench.plain_loop ROOT [--image-size 224 --batch 32 --workers 1 --epochs 2]
"""

from __future__ import annotations

import time

import timm
import torch
from PIL import Image

from effnet.data.transforms import train_transform  # one timm create_transform call, no framework


class Files(torch.utils.data.Dataset):
    def __init__(self, samples, transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def train(
    samples,
    num_classes,
    backbone,
    image_size,
    batch_size,
    workers,
    level,
    interpolation,
    mean,
    std,
    lr=1e-3,
    epochs=2,
    device="cpu",
    precision="32-true",
    channels_last=False,
    on_epoch=None,
) -> list[float]:
    """Images/s of each epoch (its steps, from asking for the first batch to the last optimizer step)."""
    transform = train_transform(
        image_size, level, interpolation
    )  # the same timm call as effnet's, by construction
    loader = torch.utils.data.DataLoader(
        Files(samples, transform),
        batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device == "cuda",
    )
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = timm.create_model(backbone, num_classes=num_classes, drop_rate=0.2).to(
        device, memory_format=memory_format
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    scale = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    shift = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=amp is torch.float16)
    rates = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for images, labels in loader:
            images = ((images.to(device, non_blocking=True).float() - shift) / scale).contiguous(
                memory_format=memory_format
            )
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(labels)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - started))
        if on_epoch:
            on_epoch(rates[-1])
    return rates


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a folder of class subfolders")
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classes = sorted(p.name for p in Path(args.root).iterdir() if p.is_dir())
    files = [
        (str(f), c)
        for c, name in enumerate(classes)
        for f in sorted((Path(args.root) / name).rglob("*.jp*g"))
    ]
    light = {"scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.0, "rand_augment": None}
    rates = train(
        files,
        len(classes),
        args.backbone,
        args.image_size,
        args.batch,
        args.workers,
        light,
        "bicubic",
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        epochs=args.epochs,
    )
    print("images/s per epoch:", ", ".join(f"{r:.1f}" for r in rates))
