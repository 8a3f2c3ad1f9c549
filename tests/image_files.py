"""Seeded image files for the image tests (small, written into tmp folders; no data files in the repo)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A small RGB picture: a coloured background with a few shapes and some noise."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, max(5, width // 2))), y0 + int(rng.integers(4, max(5, height // 2)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))


def photo_folder(folder: str, n: int, seed: int = 0) -> list:
    """n small JPEG/PNG files of varied size in folder; their names, in order."""
    os.makedirs(folder, exist_ok=True)
    names = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(24, 120)), int(rng.integers(24, 120))
        name = f"photo{i:02d}.{'jpg' if i % 2 else 'png'}"
        scene(w, h, seed * 1000 + i).save(os.path.join(folder, name), quality=90)
        names.append(name)
    return names


def write_tsv(path: str, names, per_image: int = 5) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for name in names:
            for k in range(per_image):
                fh.write(f"{name}\tpicture {name.split('.')[0]} caption {k}\n")
