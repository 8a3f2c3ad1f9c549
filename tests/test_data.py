import numpy as np
import pytest

from kidrr.data import check_features, load_split
from kidrr.errors import DataError, InputError
from kidrr.synthetic import SyntheticConfig, make_synthetic


def _write(folder, split, ims, caps):
    np.save(folder / f"{split}_ims.npy", ims)
    (folder / f"{split}_caps.txt").write_text("\n".join(caps) + "\n")


def test_layout_with_one_row_per_image(tmp_path):
    ims = np.random.rand(3, 7, 11).astype(np.float16)
    _write(tmp_path, "dev", ims, [f"caption {i}" for i in range(15)])
    split = load_split(str(tmp_path), "dev")
    assert split.images.shape == (3, 7, 11) and isinstance(split.images, np.memmap)
    assert split.caption_image.tolist() == [i // 5 for i in range(15)]


def test_layout_with_images_repeated_five_times(tmp_path):
    base = np.random.rand(2, 4, 6).astype(np.float32)
    _write(tmp_path, "test", np.repeat(base, 5, axis=0), [f"c {i}" for i in range(10)])
    split = load_split(str(tmp_path), "test")
    assert split.images.shape == (2, 4, 6)
    np.testing.assert_array_equal(np.asarray(split.images), base)


def test_bad_layouts_are_reported(tmp_path):
    with pytest.raises(DataError, match="missing"):
        load_split(str(tmp_path), "train")
    _write(tmp_path, "train", np.zeros((3, 2, 2), np.float32), ["x"] * 14)
    with pytest.raises(DataError, match="15 captions"):
        load_split(str(tmp_path), "train")
    _write(tmp_path, "train", np.zeros((1, 2, 2), np.float32), ["a", "b", "", "d", "e"])
    with pytest.raises(DataError, match="empty caption"):
        load_split(str(tmp_path), "train")


def test_feature_checks():
    good = np.zeros((2, 3, 4), np.float16)
    assert check_features(good, feature_size=4).dtype == np.float32
    bad = good.astype(np.float32)
    bad[1, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_features(bad)
    with pytest.raises(InputError, match="feature size 4"):
        check_features(good, feature_size=8)
    with pytest.raises(InputError, match="3-D"):
        check_features(np.zeros((2, 3)))
    with pytest.raises(InputError, match="floating"):
        check_features(np.zeros((2, 3, 4), np.int32))


def test_synthetic_is_deterministic_and_shaped():
    cfg = SyntheticConfig(train_images=12, dev_images=6, test_images=6, regions=9, feature_size=16)
    a, b = make_synthetic("dev", cfg), make_synthetic("dev", cfg)
    assert a.images.shape == (6, 9, 16) and len(a.captions) == 30
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions
    assert not np.array_equal(a.images, make_synthetic("test", cfg).images)


def test_synthetic_families_defeat_bag_of_words():
    """Colour- and position-swapped family members share their bag of regions' attributes: the
    mean region feature barely tells them apart, while single regions do differ."""
    from kidrr import synthetic as syn
    cfg = SyntheticConfig(noise=0.0)
    space = syn._FeatureSpace(cfg)
    rng = np.random.default_rng(0)
    base, swap_colour, _ = syn._scene_family(rng)
    regions = lambda scene: np.stack([space.region(*o, rng) for o in scene])
    r_base, r_swap = regions(base), regions(swap_colour)
    region_gap = np.linalg.norm(r_base[0] - r_swap[0])
    assert region_gap > 1.0  # the bound object differs
    # Sum of (pre-non-linearity) parts is identical; the mean after it differs far less than a region.
    assert np.linalg.norm(r_base.mean(0) - r_swap.mean(0)) < region_gap


def test_atomic_write_replaces_whole_files_with_the_usual_mode(tmp_path):
    import os
    from kidrr.fileio import write_atomic
    path = tmp_path / "f.json"
    write_atomic(str(path), b"one")
    write_atomic(str(path), b"two")
    assert path.read_bytes() == b"two"
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp files left


def _umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _folder(path, text):
    path.mkdir()
    (path / "made-by-kidrr.txt").write_text(text)


def _ours_only(folder):
    import os
    if set(os.listdir(folder)) - {"made-by-kidrr.txt"}:
        raise DataError(f"{folder} holds files kidrr did not write")


def test_a_swap_killed_between_its_renames_is_undone_by_the_next(tmp_path):
    # Killed after `out` became `out.old-X` but before the new folder took its place: the next
    # replace renames the old version back, checks it like any replaced folder, and completes.
    from kidrr.fileio import replace_dir_atomic
    _folder(tmp_path / "out.old-abc12345", "previous")
    _folder(tmp_path / "stage-a", "next")
    (tmp_path / "stage-a" / "user-notes.txt").write_text("not ours")
    _folder(tmp_path / "stage-b", "next")
    replace_dir_atomic(str(tmp_path / "stage-b"), str(tmp_path / "out"), _ours_only)
    assert (tmp_path / "out" / "made-by-kidrr.txt").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "stage-a"]
    # The check still guards what was restored: a foreign file in it refuses the replace and the
    # previous version stays where the user expects it.
    _folder(tmp_path / "mine.old-abc12345", "previous")
    (tmp_path / "mine.old-abc12345" / "photo.jpg").write_bytes(b"user data")
    with pytest.raises(DataError):
        replace_dir_atomic(str(tmp_path / "stage-a"), str(tmp_path / "mine"), _ours_only)
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"user data"


def test_leftover_old_copies_are_removed_only_when_provably_ours(tmp_path):
    from kidrr.fileio import replace_dir_atomic
    _folder(tmp_path / "out", "current")
    _folder(tmp_path / "out.old-aaaaaaaa", "killed before its delete")
    _folder(tmp_path / "out.old-bbbbbbbb", "user's")
    (tmp_path / "out.old-bbbbbbbb" / "photo.jpg").write_bytes(b"user data")
    _folder(tmp_path / "stage", "next")
    replace_dir_atomic(str(tmp_path / "stage"), str(tmp_path / "out"), _ours_only)
    assert (tmp_path / "out" / "made-by-kidrr.txt").read_text() == "next"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old-bbbbbbbb"]
