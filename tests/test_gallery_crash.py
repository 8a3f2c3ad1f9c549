"""Crash safety of the gallery writer: SIGKILL at several points of an append, and a disk that fills up.

The killed writer is a real subprocess; it pauses (and says READY) at a chosen write, so the kill
lands exactly there. Afterwards the previous gallery must be complete: same ids, same vectors,
every checksum good, and the next writer must clean the leftovers and add the same items.
"""
import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gallery_helpers as gh
from kidrr.errors import DataError
from kidrr.gallery import GalleryWriter, open_gallery, verify

CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[3])
    import gallery_helpers as gh
    from kidrr.gallery import GalleryWriter

    folder, point = sys.argv[1], sys.argv[2]      # point: file name to stop in, then after how many writes

    class Pausing:
        def __init__(self, fh, stop_after):
            self.fh, self.left = fh, stop_after
        def write(self, data):
            n = self.fh.write(data)
            self.left -= 1
            if self.left == 0:
                self.fh.flush()
                print("READY", flush=True)
                time.sleep(120)
            return n
        def __getattr__(self, name):
            return getattr(self.fh, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.fh.close()

    name, after = point.rsplit(":", 1)
    def opener(path, mode):
        fh = open(path, mode)
        base = os.path.basename(path)
        return Pausing(fh, int(after)) if base == name or (name == "manifest" and ".tmp-manifest" in base) else fh

    g, l, ids = gh.items(300, seed=7, start=1000)
    meta = gh.item_meta(300, start=1000)
    thumbs = gh.item_thumbs(300, start=1000)
    with GalleryWriter(folder, opener=opener) as w:
        w.add_batches(((g[i:i + 50], l[i:i + 50], ids[i:i + 50], meta[i:i + 50], thumbs[i:i + 50])
                       for i in range(0, 300, 50)), rows=300)
    print("DONE", flush=True)
""")


def _snapshot(folder):
    gal = open_gallery(folder)
    rows = np.arange(len(gal))
    return (gal.ids(), gal.metadata(rows), gal.thumbnails(rows)), gal.gather(rows)


# Where the kill lands: inside the locals (3rd batch), in the ids bytes, in the sorted id table, and
# in a metadata column, in the thumbnails, and with the segment renamed into place but the new manifest written and not
# yet renamed over the old.
@pytest.mark.parametrize("point", ["locals.npy:4", "ids.utf8:2", "id_hashes.npy:2", "meta-000-codes.npy:1",
                                   "thumbnails.jpgs:3", "manifest:1"])
def test_sigkill_mid_append_leaves_the_previous_gallery_whole(tmp_path, point):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=40, batches=2, metadata=True, thumbnails=True)
    (tmp_path / "g" / "mine.txt").write_text("not kidrr's")
    ids_before, (locs_before, globs_before) = _snapshot(folder)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), folder, point, os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "READY", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    leftovers = set(os.listdir(folder)) - {"manifest.json", "writer.lock", "mine.txt", "seg-000000", "seg-000001"}
    assert leftovers, "the kill should have left staging files behind for this test to mean anything"
    ids_after, (locs_after, globs_after) = _snapshot(folder)
    assert ids_after == ids_before
    np.testing.assert_array_equal(locs_after, locs_before)
    np.testing.assert_array_equal(globs_after, globs_before)
    assert verify(open_gallery(folder)) == []
    g, l, ids = gh.items(300, seed=7, start=1000)
    with GalleryWriter(folder) as w:                          # the lock died with the writer
        assert sorted(os.listdir(folder)) == ["manifest.json", "mine.txt", "seg-000000", "seg-000001", "writer.lock"]
        assert w.add(g, l, ids, gh.item_meta(300, start=1000), gh.item_thumbs(300, start=1000)) == 340
    gal = open_gallery(folder)
    assert verify(gal) == [] and gal.metadata(list(gal.find(ids[2:3]).values())) == gh.item_meta(1, start=1002)
    assert gal.thumbnails(list(gal.find(ids[2:3]).values())) == gh.item_thumbs(1, start=1002)


class FullDisk:
    """An opener whose files raise ENOSPC once `limit` bytes have been written in total."""

    def __init__(self, limit):
        self.left = limit

    def __call__(self, path, mode):
        disk, fh = self, open(path, mode)

        class Limited:
            def write(self, data):
                size = memoryview(data).nbytes
                if size > disk.left:
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.left -= size
                return fh.write(data)

            def __getattr__(self, name):
                return getattr(fh, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()
        return Limited()


def test_disk_full_during_add_and_remove_leaves_the_gallery_intact(tmp_path):
    folder = str(tmp_path / "g")
    gh.make_gallery(folder, n=30, batches=1)
    manifest = (tmp_path / "g" / "manifest.json").read_bytes()
    listing = sorted(os.listdir(folder))
    g, l, ids = gh.items(20, seed=3, start=500)
    segment_bytes = 20 * (8 * 4 + 3 * 8 * 4 + 8 + 16) + 5 * 128 + 8 + sum(len(i) for i in ids)
    # Headers and globals take 1,032 bytes, the locals 1,920 more: the disk fills in a header, in the
    # locals, and in the manifest (the segment already renamed into place).
    for limit, where in ((50, ".tmp-seg-"), (2000, ".tmp-seg-"), (segment_bytes + 20, "manifest.json")):
        with GalleryWriter(folder, opener=FullDisk(limit)) as w:
            with pytest.raises(DataError, match=f"{where}.*the disk is full.*gallery is unchanged"):
                w.add(g, l, ids)
        assert (tmp_path / "g" / "manifest.json").read_bytes() == manifest
        assert sorted(os.listdir(folder)) == listing
    with GalleryWriter(folder, opener=FullDisk(100)) as w, pytest.raises(DataError, match="disk is full"):
        w.remove(["photo-00001.jpg"])
    assert (tmp_path / "g" / "manifest.json").read_bytes() == manifest
    with GalleryWriter(folder) as w:
        assert w.add(g, l, ids) == 50
    assert verify(open_gallery(folder)) == []
