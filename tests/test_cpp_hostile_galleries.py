"""The C ABI on hostile format-2 galleries and photo folders, as the Python reader sees them: links
and FIFOs refused without blocking, a folder given as a file refused by name, a NaN global refused
by the two-stage search too; kidrr_index skips FIFOs, truncated JPEGs and names that are not UTF-8
and decodes a batch at a time."""
import io
import os
import resource
import shutil
import subprocess

import numpy as np
import pytest

import test_cpp_support as cpp
from kidrr.gallery import GalleryWriter, create_gallery
from test_cpp_runtime import EMBED, bundle, features, retriever  # noqa: F401 (fixtures)

QUERY = "a dog runs on the grass"


@pytest.fixture(scope="module")
def built():
    return cpp.build("release")


def _make(retriever, folder, n=12):  # noqa: F811
    create_gallery(str(folder), retriever.bundle_id, regions=4, dim=EMBED, locals_dtype="fp32")
    g = retriever.encode_images(features(n, 4, seed=5))
    with GalleryWriter(str(folder)) as w:
        w.add(g.globals, g.locals, [f"img-{i}" for i in range(n)])
    return str(folder)


def _search(built, bundle_dir, gallery, shortlist=0, timeout=20):
    args = [os.path.join(built, "kidrr_search"), bundle_dir, str(gallery), QUERY, "-k", "3"]
    if shortlist:
        args += ["--shortlist", str(shortlist)]
    return cpp.run(args, timeout=timeout)


def test_links_and_fifos_in_a_gallery_are_refused_without_blocking(built, bundle, retriever, tmp_path):  # noqa: F811
    cases = {}
    folder = _make(retriever, tmp_path / "link")
    ids = os.path.join(folder, "seg-000000", "ids.utf8")
    shutil.copy(ids, tmp_path / "outside.txt")               # the same bytes: only the link is wrong
    os.unlink(ids)
    os.symlink(tmp_path / "outside.txt", ids)
    cases["linked member"] = (folder, "symbolic link")
    folder = _make(retriever, tmp_path / "linkdir")
    shutil.move(os.path.join(folder, "seg-000000"), tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", os.path.join(folder, "seg-000000"))
    cases["linked segment"] = (folder, "symbolic link, not a folder")
    for member in ("manifest.json", "seg-000000/globals.npy", "seg-000000/ids.utf8"):
        folder = _make(retriever, tmp_path / member.replace("/", "_"))
        os.unlink(os.path.join(folder, member))
        os.mkfifo(os.path.join(folder, member))
        cases[f"FIFO {member}"] = (folder, "a FIFO")
    folder = _make(retriever, tmp_path / "dirmanifest")
    os.unlink(os.path.join(folder, "manifest.json"))
    os.mkdir(os.path.join(folder, "manifest.json"))
    cases["folder manifest"] = (folder, "is a folder")
    for name, (folder, message) in cases.items():
        proc = _search(built, bundle[0], folder)              # a hang fails on the timeout
        assert proc.returncode == 1 and message in proc.stderr, (name, proc.stderr)
        assert "9223372036854775807" not in proc.stderr


def test_a_folder_given_as_a_gallery_file_is_refused_by_name(built, bundle, tmp_path):  # noqa: F811
    for name in ("g.npz", "g.npy"):
        (tmp_path / name).mkdir()
        proc = cpp.run([os.path.join(built, "kidrr_tool"), "search", bundle[0], str(tmp_path / name), QUERY, "3", "0"])
        assert proc.returncode != 0
        assert "is a folder" in proc.stderr and "_M_create" not in proc.stderr and "INTERNAL" not in proc.stderr, \
            proc.stderr


def test_two_stage_search_refuses_a_nan_global_it_would_skip(built, bundle, retriever, tmp_path):  # noqa: F811
    folder = _make(retriever, tmp_path / "nan")
    path = os.path.join(folder, "seg-000000", "globals.npy")
    data = bytearray(open(path, "rb").read())
    data[128 + 4 * EMBED * 7: 128 + 4 * EMBED * 7 + 4] = np.float32(np.nan).tobytes()   # row 7's first value
    open(path, "wb").write(bytes(data))
    for shortlist in (0, 3):                                  # exact and two-stage alike
        proc = _search(built, bundle[0], folder, shortlist=shortlist)
        assert proc.returncode == 1 and "NaN or inf" in proc.stderr, (shortlist, proc.stdout, proc.stderr)


# ---- kidrr_index -------------------------------------------------------------------------------------
def _jpeg(width, height, seed=0, quality=80) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 50 + 1, width // 50 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _peak_rss_mb(args, timeout=120):
    """(process, peak RSS in MB) of one run, measured in a fresh parent so no other child counts."""
    probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(p.stderr); sys.stdout.write(p.stdout); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(p.returncode)")
    proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=timeout)
    return proc, int(proc.stdout.strip().splitlines()[-1])


import sys  # noqa: E402


def test_kidrr_index_skips_fifos_truncated_files_and_bad_names(built, pixel_bundle, tmp_path):
    from PIL import Image
    from kidrr.gallery import open_gallery
    from kidrr.images.decode import decode_image
    from kidrr.errors import ImageError
    images = tmp_path / "photos"
    images.mkdir()
    good = _jpeg(64, 48)
    (images / "a.jpg").write_bytes(good)
    (images / "b_truncated.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError):
        decode_image(str(images / "b_truncated.jpg"))                 # Python refuses it too
    os.mkfifo(images / "c_fifo.jpg")
    (images / "d_ok.jpg").write_bytes(good)
    with open(os.fsencode(str(images)) + b"/caf\xe9.jpg", "wb") as fh:   # Latin-1: not UTF-8
        fh.write(good)
    # A tiny file whose header claims 20000 x 20000: refused at the first missing byte, never decoded.
    claim = bytearray(_jpeg(64, 48, seed=3))
    sof = claim.index(b"\xff\xc0")
    claim[sof + 5:sof + 9] = (20000).to_bytes(2, "big") * 2
    (images / "e_bomb.jpg").write_bytes(bytes(claim[:1500]))
    out = tmp_path / "g"
    proc, peak = _peak_rss_mb([os.path.join(built, "kidrr_index"), pixel_bundle[0], str(images), str(out)], timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for name, why in (("b_truncated.jpg", "truncated"), ("c_fifo.jpg", "not a regular file"),
                      ("caf\\xe9.jpg", "not UTF-8"), ("e_bomb.jpg", "truncated")):
        assert f"skipped {name}: " in proc.stderr and why in proc.stderr.split(f"skipped {name}: ")[1].splitlines()[0], \
            (name, proc.stderr)
    assert open_gallery(str(out)).ids() == ["a.jpg", "d_ok.jpg"]
    assert peak < 1500, peak                                          # not the 7 GB a 400 MP decode takes
    del Image


def test_kidrr_index_memory_is_bounded_by_the_batch(built, pixel_bundle, tmp_path):
    photo = _jpeg(1600, 1200, seed=1)                                 # 5.8 MB of RGB decoded
    peaks = {}
    for count in (8, 56):
        images = tmp_path / f"p{count}"
        images.mkdir()
        for i in range(count):
            (images / f"{i:03d}.jpg").write_bytes(photo)
        proc, peaks[count] = _peak_rss_mb([os.path.join(built, "kidrr_index"), pixel_bundle[0], str(images),
                                           str(tmp_path / f"g{count}")])
        assert proc.returncode == 0, proc.stderr
    # Keeping every photo would add 48 x 5.8 = 276 MB; a batch of 16 adds at most 8 more photos' worth.
    assert peaks[56] - peaks[8] < 120, peaks


@pytest.mark.parametrize("params", [{}, {"nlist": 0}, {"nlist": 1, "M": 3}, {"nlist": True}])
def test_ann_params_are_refused_as_python_refuses_them(built, bundle, retriever, tmp_path, params):  # noqa: F811
    import json
    from kidrr.errors import DataError
    from kidrr.gallery import open_gallery
    folder = str(tmp_path / "g")
    create_gallery(folder, retriever.bundle_id, regions=4, dim=EMBED, locals_dtype="fp32", ann_min_rows=10)
    g = retriever.encode_images(features(12, 4, seed=5))
    with GalleryWriter(folder) as w:
        w.add(g.globals, g.locals, [f"img-{i}" for i in range(12)])
    doc = json.load(open(os.path.join(folder, "manifest.json")))
    assert doc["segments"][0]["ann"]["params"] == {"nlist": 1}
    doc["segments"][0]["ann"]["params"] = params
    json.dump(doc, open(os.path.join(folder, "manifest.json"), "w"))
    with pytest.raises(DataError, match="ivf params must be"):
        open_gallery(folder)
    proc = _search(built, bundle[0], folder)
    assert proc.returncode == 1 and "ivf params must be exactly" in proc.stderr, proc.stderr
