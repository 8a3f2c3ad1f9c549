"""kidrr render: the pixel synthetic set's splits written as image folders with captions files.

Layout of OUT/{split}/ (what kidrr features reads): images/{split}_NNNNNN.png, captions.tsv (file
name <TAB> caption, 5 rows per image, in image order) and render.json (the configs that made it).
Every PNG is written atomically and rendering is deterministic, so an interrupted render resumes:
files already there are kept; captions.tsv is written last, so its presence means the split is
complete. A folder holding a different render (other seed, sizes or look) is refused, never mixed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile

import click
import numpy as np
from tqdm import tqdm

from .config import dump_json
from .errors import ConfigError, DataError
from .fileio import replace_dir_atomic, write_atomic
from .synthetic import COLOURS, SIZES, SyntheticConfig
from .synthetic_images import SHAPES, SPLITS, PixelSplit, RenderConfig, make_pixel_split, render_scene

CAPTIONS_FILE, RECORD_FILE, IMAGES_DIR = "captions.tsv", "render.json", "images"


def _check_record(folder: str, record: dict) -> None:
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.exists(path):
        if os.path.isdir(os.path.join(folder, IMAGES_DIR)) and os.listdir(os.path.join(folder, IMAGES_DIR)):
            raise ConfigError(f"{folder} already holds images but no {RECORD_FILE}: it was not written by "
                              f"kidrr render; choose an empty --out")
        write_atomic(path, dump_json(record).encode())
        return
    try:
        with open(path) as fh:
            found = json.load(fh)
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); choose another --out") from exc
    if found != json.loads(dump_json(record)):
        raise ConfigError(f"{folder} holds a different render ({path} differs from this one: other seed, "
                          f"sizes or look); choose another --out, or repeat the options it was made with")


def write_pixel_split(split: PixelSplit, folder: str, progress: bool = True) -> str:
    """Render `split` into folder (resumable); returns the captions file's path."""
    os.makedirs(os.path.join(folder, IMAGES_DIR), exist_ok=True)
    _check_record(folder, split.describe())
    images_dir = os.path.join(folder, IMAGES_DIR)
    rows = []
    for index in tqdm(range(len(split)), desc=f"render {split.name}", unit="img", disable=not progress):
        name = split.file_name(index)
        path = os.path.join(images_dir, name)
        if not os.path.exists(path):  # atomic writes: an existing file is a whole one
            image, _ = split.picture(index)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            write_atomic(path, buf.getvalue())
        rows.extend(f"{name}\t{caption}" for caption in split.captions_of(index))
    captions_path = os.path.join(folder, CAPTIONS_FILE)
    write_atomic(captions_path, ("\n".join(rows) + "\n").encode("utf-8"))
    return captions_path


# The demo folder: DEMO_SCENES pictures of the pixel test split (seed DEMO_SEED), plus the example
# query's scene and its three family members, so `kidrr search --demo` shows the model telling
# them apart. Scenes are (kind, colour, size, cell) indices; cells 3 and 5 are middle left / right.
DEMO_SEED, DEMO_SCENES = 0, 60
_K, _C, _S = SHAPES.index, COLOURS.index, SIZES.index
DEMO_EXAMPLES = {
    "example_big_red_circle_left_of_small_blue_square.png":
        [(_K("circle"), _C("red"), _S("big"), 3), (_K("square"), _C("blue"), _S("small"), 5)],
    "example_colours_swapped.png":
        [(_K("circle"), _C("blue"), _S("big"), 3), (_K("square"), _C("red"), _S("small"), 5)],
    "example_places_swapped.png":
        [(_K("circle"), _C("red"), _S("big"), 5), (_K("square"), _C("blue"), _S("small"), 3)],
    "example_sizes_swapped.png":
        [(_K("circle"), _C("red"), _S("small"), 3), (_K("square"), _C("blue"), _S("big"), 5)],
}


def demo_record() -> dict:
    synthetic = SyntheticConfig(test_images=DEMO_SCENES, seed=DEMO_SEED)
    return {"demo": 1, "test_split": make_pixel_split("test", synthetic).describe(),
            "examples": {name: [list(o) for o in scene] for name, scene in DEMO_EXAMPLES.items()},
            "renderer": renderer_fingerprint()}


def renderer_fingerprint() -> str:
    """sha256 of the scene and drawing code: a changed renderer never reuses a stale demo folder."""
    from importlib import resources
    digest = hashlib.sha256()
    for name in ("synthetic.py", "synthetic_images.py"):
        digest.update((resources.files("kidrr") / name).read_bytes())
    return digest.hexdigest()[:12]


def render_demo_folder(root: str, progress: bool = False) -> str:
    """The demo pictures in root/pixel-demo-<fingerprint>/ (rendered on first use, then reused)."""
    record = demo_record()
    folder = os.path.join(root, f"pixel-demo-{record['renderer']}")
    done = os.path.join(folder, RECORD_FILE)
    if os.path.exists(done):
        return folder
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(dir=root, prefix=".tmp-demo-")
    split = make_pixel_split("test", SyntheticConfig(test_images=DEMO_SCENES, seed=DEMO_SEED))
    pictures = [(split.file_name(i), lambda i=i: split.picture(i)[0]) for i in range(len(split))]
    pictures += [(name, lambda k=k, scene=scene: render_scene(scene, np.random.default_rng([DEMO_SEED, 0xDE40, k]),
                                                              split.render)[0])
                 for k, (name, scene) in enumerate(DEMO_EXAMPLES.items())]
    for name, draw in tqdm(pictures, desc="render demo", unit="img", disable=not progress):
        draw().save(os.path.join(staging, name), format="PNG")
    write_atomic(os.path.join(staging, RECORD_FILE), dump_json(record).encode())
    replace_dir_atomic(staging, folder)  # whole folder or none: a half-rendered demo is never reused
    return folder


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for {train,dev,test}/")
@click.option("--splits", default="train,dev,test", show_default=True, help="comma-separated splits to render")
@click.option("--train", "train_images", default=1500, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--dev", "dev_images", default=200, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--test", "test_images", default=500, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--image-size", default=224, show_default=True, type=int, help="square pictures, pixels per side")
@click.option("--quiet", is_flag=True, help="no progress bar")
def main(out, splits, train_images, dev_images, test_images, seed, image_size, quiet):
    """Render the pixel synthetic set (kidrr.synthetic's scenes drawn as PNGs) into OUT/{split}/."""
    names = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SPLITS))
    if unknown or not names:
        raise click.BadParameter(f"unknown split(s) {unknown or names}; choose from {list(SPLITS)}", param_hint="--splits")
    synthetic = SyntheticConfig(train_images=train_images, dev_images=dev_images, test_images=test_images, seed=seed)
    try:
        render = RenderConfig(image_size=image_size)
        for name in names:
            path = write_pixel_split(make_pixel_split(name, synthetic, render), os.path.join(out, name),
                                     progress=not quiet)
            click.echo(f"{name}: {path}")
    except (ConfigError, DataError) as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
