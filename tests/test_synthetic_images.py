"""The pixel synthetic set: deterministic, the scenes of kidrr.synthetic, objects drawn where and as
big as the scene says (measured from the pixels, not from the renderer's own record)."""
import numpy as np
import pytest

from kidrr.errors import ConfigError
from kidrr.synthetic import COLOURS, KINDS, SIZES, SyntheticConfig, make_synthetic, make_synthetic_scenes
from kidrr.synthetic_images import COLOUR_RGB, SHAPES, SIZE_RANGE, RenderConfig, make_pixel_split, render_scene

CFG = SyntheticConfig(train_images=30, dev_images=12, test_images=40, seed=3)
# A pixel "has" an object's colour when every channel is within this of it: the object's colour
# jitter (12) plus 4.5 x the pixel noise's std (6) is 39.
TOLERANCE = 40


def _pixels(split, index):
    return np.asarray(split.picture(index)[0], dtype=np.int16)


def _cell_bounds(cell, size):
    # Written out here rather than taken from the renderer: row-major 3 x 3 grid, cell 0 top left.
    row, col = divmod(cell, 3)
    return (round(col * size / 3), round(row * size / 3), round((col + 1) * size / 3), round((row + 1) * size / 3))


def _colour_mask(pixels, colour):
    return (np.abs(pixels - np.array(COLOUR_RGB[colour])) <= TOLERANCE).all(axis=2)


def test_same_seed_same_pixels_in_any_order_other_seed_other_pixels():
    a, b = make_pixel_split("dev", CFG), make_pixel_split("dev", CFG)
    late_first = _pixels(b, 7)  # rendered before any other image of b
    for index in range(len(a)):
        np.testing.assert_array_equal(_pixels(a, index), _pixels(b, index))
    np.testing.assert_array_equal(late_first, _pixels(a, 7))
    other = make_pixel_split("dev", SyntheticConfig(train_images=30, dev_images=12, test_images=40, seed=4))
    assert not np.array_equal(_pixels(a, 0), _pixels(other, 0))
    assert not np.array_equal(_pixels(a, 0), _pixels(make_pixel_split("test", CFG), 0))


def test_scenes_and_captions_are_the_feature_sets_with_kinds_named_by_shape():
    features = make_synthetic("test", CFG)
    _, scenes = make_synthetic_scenes("test", CFG)
    pixels = make_pixel_split("test", CFG)
    assert pixels.scenes == scenes
    rename = dict(zip(KINDS, SHAPES))
    expected = [" ".join(rename.get(word, word) for word in caption.split(" ")) for caption in features.captions]
    assert pixels.captions == expected
    assert len(pixels.captions) == 5 * len(pixels)
    assert any(shape in pixels.captions[0].split() for shape in SHAPES)


def _check_object(pixels, kind, colour, size, cell, what):
    """Longer side of the object's box over its cell's side, after checking place and colour."""
    image_size = pixels.shape[0]
    mask = _colour_mask(pixels, COLOURS[colour])
    x0, y0, x1, y1 = _cell_bounds(cell, image_size)
    inside = mask[y0:y1, x0:x1]
    what = f"{what}: {SIZES[size]} {COLOURS[colour]} {SHAPES[kind]} in cell {cell}"
    # Colours are distinct within a scene and no distractor has an object colour: nearly all
    # pixels of this colour belong to the object, inside its cell.
    assert inside.sum() >= 0.95 * mask.sum(), what
    ys, xs = np.nonzero(inside)
    longer = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    cell_side = min(x1 - x0, y1 - y0)
    lo, hi = SIZE_RANGE[SIZES[size]]
    # +-2 px: the rasteriser rounds polygon and ellipse edges.
    assert lo * cell_side - 2 <= longer <= hi * cell_side + 2, (what, longer, cell_side)
    # The thinnest shapes (ring, frame, cross, moon) still fill a fifth of their box.
    assert inside.sum() >= 0.2 * (lo * cell_side) ** 2, what
    return longer / cell_side


@pytest.mark.parametrize("image_size", [224, 150])
def test_objects_are_drawn_in_their_cell_with_their_colour_and_stated_size(image_size):
    split = make_pixel_split("test", CFG, RenderConfig(image_size=image_size))
    sizes_seen = {name: [] for name in SIZES}
    for index, scene in enumerate(split.scenes):
        pixels = _pixels(split, index)
        for kind, colour, size, cell in scene:
            sizes_seen[SIZES[size]].append(_check_object(pixels, kind, colour, size, cell, f"image {index}"))
    assert min(sizes_seen["big"]) > 1.5 * max(sizes_seen["small"])  # "big" and "small" never overlap


def test_every_shape_in_every_colour_and_size():
    for kind in range(len(SHAPES)):
        for colour in range(len(COLOURS)):
            # Three objects per picture in distinct colours and cells, as in a real scene.
            scene = [(kind, colour, colour % 2, colour % 9), ((kind + 7) % 20, (colour + 3) % 8, 1, (colour + 4) % 9),
                     ((kind + 3) % 20, (colour + 5) % 8, 0, (colour + 6) % 9)]
            image, record = render_scene(scene, np.random.default_rng([kind, colour]))
            pixels = np.asarray(image, dtype=np.int16)
            for obj in scene:
                _check_object(pixels, *obj, what=f"shape {SHAPES[kind]}")
            # The renderer's own record agrees with the scene it was given.
            assert [(SHAPES.index(o.shape), COLOURS.index(o.colour), SIZES.index(o.size), o.cell)
                    for o in record] == scene


def test_bad_render_settings_are_refused():
    with pytest.raises(ConfigError, match="image_size"):
        RenderConfig(image_size=8)
    with pytest.raises(ConfigError, match="colours overlap"):
        RenderConfig(pixel_noise=80)
    with pytest.raises(ConfigError, match="distractors"):
        RenderConfig(distractors=(5, 2))


def test_render_writes_the_captions_layout_resumes_and_refuses_another_render(tmp_path):
    from click.testing import CliRunner
    from PIL import Image
    from kidrr.render import main
    out = tmp_path / "pix"
    args = ["--out", str(out), "--splits", "dev", "--dev", "4", "--seed", "3", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    split = make_pixel_split("dev", SyntheticConfig(dev_images=4, seed=3))
    rows = (out / "dev" / "captions.tsv").read_text().splitlines()
    assert rows == [f"{split.file_name(i)}\t{c}" for i in range(4) for c in split.captions_of(i)]
    first = out / "dev" / "images" / split.file_name(0)
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(split.picture(0)[0]))  # PNG: lossless
    # Interrupted render: a missing image is rendered again, identical; the others are kept as they are.
    kept = out / "dev" / "images" / split.file_name(1)
    stamp = kept.stat().st_mtime_ns
    first.unlink()
    assert CliRunner().invoke(main, args).exit_code == 0
    np.testing.assert_array_equal(np.asarray(Image.open(first)), np.asarray(split.picture(0)[0]))
    assert kept.stat().st_mtime_ns == stamp
    # Another seed into the same folder would mix two renders: refused, nothing deleted.
    result = CliRunner().invoke(main, ["--out", str(out), "--splits", "dev", "--dev", "4", "--seed", "4", "--quiet"])
    assert result.exit_code != 0 and "different render" in result.output
    assert sorted(p.name for p in (out / "dev" / "images").iterdir()) == [split.file_name(i) for i in range(4)]
    assert CliRunner().invoke(main, ["--out", str(out), "--splits", "nope"]).exit_code != 0


def test_demo_folder_holds_the_example_scene_and_its_family_and_is_reused(tmp_path):
    from PIL import Image
    from kidrr.render import DEMO_EXAMPLES, DEMO_SCENES, render_demo_folder
    folder = render_demo_folder(str(tmp_path))
    pictures = sorted(p for p in __import__("os").listdir(folder) if p.endswith(".png"))
    assert len(pictures) == DEMO_SCENES + len(DEMO_EXAMPLES)
    for name, scene in DEMO_EXAMPLES.items():
        pixels = np.asarray(Image.open(f"{folder}/{name}"), dtype=np.int16)
        for obj in scene:
            _check_object(pixels, *obj, what=name)
    # The example the demo query names: a big red circle in the middle-left cell, a small blue square
    # in the middle-right one.
    assert DEMO_EXAMPLES["example_big_red_circle_left_of_small_blue_square.png"] == [
        (SHAPES.index("circle"), COLOURS.index("red"), SIZES.index("big"), 3),
        (SHAPES.index("square"), COLOURS.index("blue"), SIZES.index("small"), 5)]
    stamp = (tmp_path / folder / pictures[0]).stat().st_mtime_ns
    assert render_demo_folder(str(tmp_path)) == folder
    assert (tmp_path / folder / pictures[0]).stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
