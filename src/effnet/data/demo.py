"""A small, deterministic synthetic ImageFolder: drawn shapes on noisy backgrounds.

Each class is a shape with its own colour family (hue jittered), at random sizes, positions and
angles on a random noisy background: easy enough to learn from scratch on a CPU in about a
minute, hard enough that a model that learned nothing stays at chance. Written once (same seed,
same pixels) and reused by later demo runs.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
HUES = (0.0, 0.33, 0.62, 0.14)  # red, green, blue, yellow
MARKER = ".complete-v2"


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners = [math.pi / 4 + k * math.pi / 2 for k in range(4)]
    elif kind == "triangle":
        corners = [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
    else:
        raise ValueError(kind)
    return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a in corners]


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(40, 216) + rng.integers(-25, 26, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    hue = (HUES[CLASSES.index(kind)] + rng.uniform(-0.06, 0.06)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    colour = tuple(int(255 * c) for c in rgb)
    r = rng.uniform(0.2, 0.38) * size
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "cross":
        w = r / 3
        for a in (angle, angle + math.pi / 2):
            dx, dy = math.cos(a), math.sin(a)
            px, py = -dy * w, dx * w
            draw.polygon(
                [
                    (cx - dx * r + px, cy - dy * r + py),
                    (cx + dx * r + px, cy + dy * r + py),
                    (cx + dx * r - px, cy + dy * r - py),
                    (cx - dx * r - px, cy - dy * r - py),
                ],
                fill=colour,
            )
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=colour)
    return img


def write_demo(root: str | Path, per_class: int = 130, size: int = 64, seed: int = 0) -> Path:
    """Write root/<class>/<n>.png unless a complete copy is already there."""
    root = Path(root)
    if (root / MARKER).is_file():
        return root
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            draw_shape(kind, size, rng).save(root / kind / f"{n:04d}.png")
    (root / MARKER).write_text(f"{len(CLASSES)} classes x {per_class} images, {size}px, seed {seed}\n")
    return root
