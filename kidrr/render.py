"""kidrr-render: the pixel synthetic set's splits written as image folders with captions files.

Layout of OUT/{split}/ (what kidrr-features reads): images/{split}_NNNNNN.png, captions.tsv (file
name <TAB> caption, 5 rows per image, in image order) and render.json (the configs that made it).
Every PNG is written atomically and rendering is deterministic, so an interrupted render resumes:
files already there are kept; captions.tsv is written last, so its presence means the split is
complete. A folder holding a different render (other seed, sizes or look) is refused, never mixed.
"""
from __future__ import annotations

import io
import json
import os

import click
from tqdm import tqdm

from .config import dump_json
from .errors import ConfigError, DataError
from .fileio import write_atomic
from .synthetic import SyntheticConfig
from .synthetic_images import SPLITS, PixelSplit, RenderConfig, make_pixel_split

CAPTIONS_FILE, RECORD_FILE, IMAGES_DIR = "captions.tsv", "render.json", "images"


def _check_record(folder: str, record: dict) -> None:
    path = os.path.join(folder, RECORD_FILE)
    if not os.path.exists(path):
        if os.path.isdir(os.path.join(folder, IMAGES_DIR)) and os.listdir(os.path.join(folder, IMAGES_DIR)):
            raise ConfigError(f"{folder} already holds images but no {RECORD_FILE}: it was not written by "
                              f"kidrr-render; choose an empty --out")
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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder for {train,dev,test}/")
@click.option("--splits", default="train,dev,test", show_default=True, help="comma-separated splits to render")
@click.option("--train", "train_images", default=3000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--dev", "dev_images", default=300, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--test", "test_images", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
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
