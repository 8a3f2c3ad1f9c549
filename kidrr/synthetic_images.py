"""The synthetic set drawn as pixels: the scenes of kidrr.synthetic rendered as RGB images (Pillow).

For one SyntheticConfig, image i of a pixel split is a picture of scene i of
`make_synthetic_scenes(split, cfg)`: the same objects, colours, sizes and 3x3 grid cells, and the
same captions with each kind named by the shape that draws it (kind k of synthetic.KINDS is drawn
as SHAPES[k], so "a small blue dog" becomes "a small blue square"). Scene families (colours or
positions swapped between two objects) carry over, so binding and word order still decide.

Each picture: a grey background with a gentle gradient, distractors (thin lines and dots in colours
no object has) drawn behind the objects, each object in its cell with jitter in position, size and
colour, then Gaussian pixel noise. Every picture has its own random stream (seed, split, index), so
any image can be rendered alone, in any order, and a render can resume. Seeded code, no data files.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from .data import CAPTIONS_PER_IMAGE
from .errors import ConfigError, InputError
from .synthetic import COLOURS, KINDS, SIZES, SyntheticConfig, make_synthetic_scenes

# SHAPES[k] draws synthetic.KINDS[k]; one word each (the tokenizer splits on spaces).
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "plus", "ring", "hexagon",
          "pentagon", "octagon", "heart", "moon", "arrow", "bar", "pillar", "oval", "trapezoid",
          "dome", "frame"]
# Object colours, far apart per channel (>= 80 on some channel between any two, and from the grey
# background), so a colour stays recognisable under the jitter and noise below.
COLOUR_RGB = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 160, 40), "yellow": (240, 220, 30),
              "black": (15, 15, 15), "white": (245, 245, 245), "brown": (130, 75, 30), "orange": (250, 140, 20)}
# Distractor colours: none is an object colour, so clutter never reads as an object.
DISTRACTOR_RGB = [(235, 150, 190), (120, 50, 170), (50, 200, 200), (0, 128, 128)]
# Size of a shape's bounding box (its longer side) as a fraction of a grid cell's side.
SIZE_RANGE = {"small": (0.36, 0.46), "big": (0.72, 0.86)}
MIN_IMAGE_SIZE = 48
MAX_IMAGE_SIZE = 2048

assert len(SHAPES) == len(KINDS) and set(COLOUR_RGB) == set(COLOURS) and set(SIZE_RANGE) == set(SIZES)


@dataclass
class RenderConfig:
    image_size: int = 224        # square pictures; 224 is EfficientNet-Lite0's input, so no resize
    pixel_noise: float = 6.0     # std of the Gaussian noise added to every channel (0..255 scale)
    colour_jitter: int = 12      # each object's RGB moves by up to this much per channel
    distractors: tuple = (3, 8)  # min, max count of clutter strokes per picture
    background: tuple = (110, 145)  # range of the background grey

    def __post_init__(self):
        if not MIN_IMAGE_SIZE <= int(self.image_size) <= MAX_IMAGE_SIZE:
            raise ConfigError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {self.image_size}")
        if not 0 <= self.pixel_noise <= 40 or not 0 <= self.colour_jitter <= 30:
            raise ConfigError(f"pixel_noise must be in [0, 40] and colour_jitter in [0, 30] (larger values "
                              f"make colours overlap), got {self.pixel_noise}, {self.colour_jitter}")
        lo, hi = self.distractors
        if not 0 <= lo <= hi <= 50:
            raise ConfigError(f"distractors must be (min, max) with 0 <= min <= max <= 50, got {self.distractors}")
        self.distractors = (int(lo), int(hi))
        self.background = tuple(int(v) for v in self.background)


@dataclass(frozen=True)
class DrawnObject:
    """One object as drawn: its names and the pixel box its shape was fitted into."""
    shape: str
    colour: str
    size: str
    cell: int                    # 0..8, row-major on the 3x3 grid (0 is top left)
    box: tuple                   # (x0, y0, x1, y1) in pixels, x1/y1 exclusive

    def rgb(self) -> tuple:
        return COLOUR_RGB[self.colour]


def cell_box(cell: int, image_size: int) -> tuple:
    """(x0, y0, x1, y1) of a grid cell in pixels, x1/y1 exclusive."""
    if not 0 <= cell < 9:
        raise InputError(f"grid cell must be in 0..8, got {cell}")
    row, col = divmod(cell, 3)
    edges = [round(k * image_size / 3) for k in range(4)]
    return edges[col], edges[row], edges[col + 1], edges[row + 1]


def _regular(cx, cy, r, n, phase=-math.pi / 2, inner=None, x_scale=1.0):
    """Vertices of a regular n-gon (or an n-pointed star with an inner radius)."""
    pts = []
    steps = 2 * n if inner else n
    for k in range(steps):
        rad = (inner if inner and k % 2 else r)
        a = phase + 2 * math.pi * k / steps
        pts.append((cx + x_scale * rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


_FIVE_FOLD_X = 1.0 / (1.1 * math.cos(math.pi / 10))  # a 5-fold shape of radius 1.1 r is 2.09 r wide


def _draw_shape(mask: ImageDraw.ImageDraw, shape: str, x0: float, y0: float, side: float) -> None:
    """Fill `shape` into the square box (x0, y0, side) on an 'L' mask; it touches the box's edges."""
    x1, y1 = x0 + side - 1, y0 + side - 1
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (side - 1) / 2
    thick = max(2, round(0.28 * side))
    if shape == "circle":
        mask.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        mask.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        mask.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        mask.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        # Five points: 1.1 r reaches the box's top and bottom; x squashed to its width.
        mask.polygon(_regular(cx, cy + 0.1 * r, 1.1 * r, 5, inner=0.45 * r, x_scale=_FIVE_FOLD_X), fill=255)
    elif shape == "cross":
        d = thick / (2 * math.sqrt(2))  # inset so the strokes' square ends stay inside the box
        mask.line([(x0 + d, y0 + d), (x1 - d, y1 - d)], fill=255, width=thick)
        mask.line([(x0 + d, y1 - d), (x1 - d, y0 + d)], fill=255, width=thick)
    elif shape == "plus":
        mask.rectangle((x0, cy - thick / 2, x1, cy + thick / 2), fill=255)
        mask.rectangle((cx - thick / 2, y0, cx + thick / 2, y1), fill=255)
    elif shape == "ring":
        mask.ellipse((x0, y0, x1, y1), outline=255, width=thick)
    elif shape == "hexagon":
        mask.polygon(_regular(cx, cy, r, 6, phase=0), fill=255)
    elif shape == "pentagon":
        mask.polygon(_regular(cx, cy + 0.1 * r, 1.1 * r, 5, x_scale=_FIVE_FOLD_X), fill=255)
    elif shape == "octagon":
        mask.polygon(_regular(cx, cy, r / math.cos(math.pi / 8), 8, phase=math.pi / 8), fill=255)
    elif shape == "heart":
        mask.ellipse((x0, y0, cx + 0.05 * r, cy + 0.1 * r), fill=255)
        mask.ellipse((cx - 0.05 * r, y0, x1, cy + 0.1 * r), fill=255)
        mask.polygon([(x0 + 0.04 * side, cy - 0.05 * r), (x1 - 0.04 * side, cy - 0.05 * r), (cx, y1)], fill=255)
    elif shape == "moon":
        mask.ellipse((x0, y0, x1, y1), fill=255)
        mask.ellipse((x0 + 0.45 * side, y0 - 0.1 * side, x1 + 0.45 * side, y1 - 0.1 * side), fill=0)
    elif shape == "arrow":
        shaft = 0.3 * side
        mask.rectangle((x0, cy - shaft / 2, cx, cy + shaft / 2), fill=255)
        mask.polygon([(cx - 1, y0), (x1, cy), (cx - 1, y1)], fill=255)
    elif shape == "bar":
        mask.rectangle((x0, cy - 0.18 * side, x1, cy + 0.18 * side), fill=255)
    elif shape == "pillar":
        mask.rectangle((cx - 0.18 * side, y0, cx + 0.18 * side, y1), fill=255)
    elif shape == "oval":
        mask.ellipse((x0, cy - 0.3 * side, x1, cy + 0.3 * side), fill=255)
    elif shape == "trapezoid":
        mask.polygon([(x0 + 0.25 * side, cy - 0.3 * side), (x1 - 0.25 * side, cy - 0.3 * side),
                      (x1, cy + 0.3 * side), (x0, cy + 0.3 * side)], fill=255)
    elif shape == "dome":
        mask.pieslice((x0, y0 + 0.25 * side, x1, y1 + 0.75 * side), 180, 360, fill=255)
    elif shape == "frame":
        mask.rectangle((x0, y0, x1, y1), outline=255, width=max(2, round(0.2 * side)))
    else:
        raise InputError(f"unknown shape {shape!r}; known shapes: {SHAPES}")


def _draw_distractors(canvas: ImageDraw.ImageDraw, rng, cfg: RenderConfig) -> None:
    size = cfg.image_size
    for _ in range(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))):
        rgb = DISTRACTOR_RGB[int(rng.integers(len(DISTRACTOR_RGB)))]
        if rng.random() < 0.5:  # a thin stroke
            pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
            canvas.line(pts, fill=rgb, width=int(rng.integers(1, max(2, size // 90) + 1)))
        else:  # a dot, smaller than any object
            r = rng.uniform(1.0, max(1.5, size / 75))
            cx, cy = rng.uniform(0, size, 2)
            canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)


def render_scene(scene, rng, cfg: RenderConfig | None = None):
    """(RGB PIL image, [DrawnObject]) for one scene: a list of (kind, colour, size, cell) indices."""
    cfg = cfg or RenderConfig()
    size = cfg.image_size
    lo, hi = cfg.background
    grey = rng.uniform(lo, hi)
    ramp = np.linspace(-1.0, 1.0, size)
    angle = rng.uniform(0, 2 * math.pi)
    gradient = 10.0 * (math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None])
    background = np.clip(grey + gradient, 0, 255)[:, :, None].repeat(3, axis=2)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    _draw_distractors(ImageDraw.Draw(image), rng, cfg)
    drawn = []
    for kind, colour, size_idx, cell in scene:
        shape, colour_name, size_name = SHAPES[kind], COLOURS[colour], SIZES[size_idx]
        cx0, cy0, cx1, cy1 = cell_box(cell, size)
        cell_side = min(cx1 - cx0, cy1 - cy0)
        side = max(4, round(rng.uniform(*SIZE_RANGE[size_name]) * cell_side))
        slack = cell_side - side  # the shape moves within its cell but never leaves it
        x0 = cx0 + round(rng.uniform(0.1, 0.9) * slack)
        y0 = cy0 + round(rng.uniform(0.1, 0.9) * slack)
        mask = Image.new("L", image.size, 0)
        _draw_shape(ImageDraw.Draw(mask), shape, x0, y0, side)
        jitter = rng.integers(-cfg.colour_jitter, cfg.colour_jitter + 1, size=3)
        rgb = tuple(int(v) for v in np.clip(np.array(COLOUR_RGB[colour_name]) + jitter, 0, 255))
        image.paste(rgb, (0, 0), mask)
        drawn.append(DrawnObject(shape, colour_name, size_name, int(cell), (x0, y0, x0 + side, y0 + side)))
    pixels = np.asarray(image, dtype=np.float32)
    if cfg.pixel_noise > 0:
        pixels = pixels + rng.normal(0.0, cfg.pixel_noise, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB"), drawn


SPLITS = ("train", "dev", "test")


class PixelSplit:
    """One split of the pixel set: scenes and captions up front, pictures rendered on demand."""

    def __init__(self, name: str, scenes: list, captions: list, synthetic: SyntheticConfig, render: RenderConfig):
        self.name, self.scenes, self.captions = name, scenes, captions
        self.synthetic, self.render = synthetic, render

    def __len__(self) -> int:
        return len(self.scenes)

    def file_name(self, index: int) -> str:
        return f"{self.name}_{index:06d}.png"

    def captions_of(self, index: int) -> list:
        return self.captions[CAPTIONS_PER_IMAGE * index:CAPTIONS_PER_IMAGE * (index + 1)]

    def picture(self, index: int):
        """(RGB PIL image, [DrawnObject]) of image `index`; the same on every call."""
        if not 0 <= index < len(self.scenes):
            raise InputError(f"{self.name} has {len(self.scenes)} images; index {index} is out of range")
        rng = np.random.default_rng([self.synthetic.seed, SPLITS.index(self.name), index, 0x91C5])
        return render_scene(self.scenes[index], rng, self.render)

    def describe(self) -> dict:
        """What made this split (recorded next to a render, so a resumed render can check it)."""
        return {"split": self.name, "images": len(self), "synthetic": asdict(self.synthetic),
                "render": asdict(self.render), "shapes": SHAPES}


def make_pixel_split(split: str, synthetic: SyntheticConfig | None = None,
                     render: RenderConfig | None = None) -> PixelSplit:
    """The pixel version of make_synthetic(split, synthetic); deterministic in synthetic.seed."""
    synthetic = synthetic or SyntheticConfig()
    render = render or RenderConfig()
    # The feature split is generated too (its random stream decides the captions); its features
    # are dropped. About 1 s per 1,000 images.
    features, scenes = make_synthetic_scenes(split, synthetic, kind_names=SHAPES)
    return PixelSplit(split, scenes, features.captions, synthetic, render)
