"""kidrr index --engine ray on a 2-node Ray cluster on this machine (ray.cluster_utils.Cluster, 1 CPU per
node): the same gallery as the local engine, a worker killed mid-job, a driver killed mid-job and the
rerun, a reader searching throughout, the shared-storage probe, the staging area's exactly-once rules, a
(simulated) full disk on a worker, a --list with metadata columns; and kidrr features --engine ray.
One cluster serves the whole module.
Select with `-m ray_cluster`; deselect with `-m "not ray_cluster"`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from image_files import photo_folder

pytestmark = pytest.mark.ray_cluster
pytest.importorskip("ray.data", reason="the `ray` extra (ray[data]) is not installed")

PHOTOS = 60
SEGMENT = 4


@pytest.fixture(scope="module")
def album(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-album")
    photo_folder(str(root), PHOTOS, seed=5)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    os.symlink(root / "photo00.png", root / "link.png")      # handled as kidrr index handles links
    return str(root)


@pytest.fixture(scope="module")
def local_gallery(pixel_bundle, album, tmp_path_factory):
    from kidrr.photos.index import index_folder
    out = str(tmp_path_factory.mktemp("local") / "g")
    record = index_folder(pixel_bundle[0], album, out, threads=2, progress=False)
    return out, record


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
    yield c
    ray.shutdown()
    c.shutdown()


def _vectors(folder):
    from kidrr.gallery import open_gallery
    g = open_gallery(folder)
    ids = g.ids()
    locs, globs = g.gather(np.arange(len(g)))
    thumbs = g.thumbnails(np.arange(len(g)))
    return {i: (locs[r], globs[r], thumbs[r]) for r, i in enumerate(ids)}, ids


def _assert_same_as_local(out, local):
    from kidrr.gallery import open_gallery, verify
    assert verify(open_gallery(out)) == []
    mine, ids = _vectors(out)
    theirs, local_ids = _vectors(local)
    assert len(ids) == len(set(ids)), "a photo is in the gallery twice"
    assert set(ids) == set(local_ids)
    worst = max(max(np.abs(mine[i][0] - theirs[i][0]).max(), np.abs(mine[i][1] - theirs[i][1]).max()) for i in ids)
    assert worst <= 1e-6, worst
    missing = [i for i in ids if mine[i][2] is None or theirs[i][2] is None]
    assert not missing, f"no thumbnail for {missing[:3]} (ray: {[mine[i][2] is None for i in missing[:3]]})"
    assert all(mine[i][2] == theirs[i][2] for i in ids), "thumbnails differ from local's"
    assert not os.path.exists(os.path.join(out, "staged")), "the job left its staging area behind"


def _committed_worker(out, timeout=240):
    """(segment folder, pid) of the first committed segment: its staging record names the writing process."""
    from kidrr.errors import DataError
    from kidrr.gallery.layout import read_manifest
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            segments = read_manifest(out)[0].segments if os.path.isfile(os.path.join(out, "manifest.json")) else ()
        except DataError:
            segments = ()
        for seg in segments:             # named by the manifest: committed, not just renamed
            try:
                return seg.name, json.load(open(os.path.join(out, seg.name, "staged.json")))["pid"]
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
    raise AssertionError("no segment was committed in time")


def test_worker_killed_mid_job_same_gallery_as_local_reader_never_broken(pixel_bundle, album, local_gallery,
                                                                        cluster, tmp_path):
    from kidrr.gallery import open_gallery
    from kidrr.photos.ray_index import index_with_ray
    from kidrr.runtime import open_bundle
    out = str(tmp_path / "ray.gallery")
    result, errors, seen = {}, [], []
    done = threading.Event()

    def job():
        try:
            result.update(index_with_ray(pixel_bundle[0], album, out, workers=2, cpus_per_worker=1,
                                         segment_photos=SEGMENT, commit_every=1, commit_seconds=0, progress=False))
        except BaseException as exc:    # reported by the assertion below
            errors.append(exc)
        finally:
            done.set()

    def reader():
        with open_bundle(pixel_bundle[0], threads=1) as rt:
            while not done.is_set():
                if os.path.isfile(os.path.join(out, "manifest.json")):
                    try:
                        g = open_gallery(out)
                        n = len(g)
                        if n:
                            hits = rt.search_text("a red circle", k=min(5, n), gallery=g)
                            assert len({h[0] for h in hits}) == len(hits) == min(5, n)
                        assert not seen or n >= seen[-1], "the gallery shrank"
                        seen.append(n)
                    except BaseException as exc:
                        errors.append(exc)
                        return
                time.sleep(0.05)

    threads = [threading.Thread(target=job), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    _, pid = _committed_worker(out)
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        assert b"ray::" in fh.read(), "the recorded writer is not a Ray worker process"
    os.kill(pid, signal.SIGKILL)                 # the encoder actor that wrote the first segment
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert len(set(seen)) > 2 and 0 < max(seen) <= len(open_gallery(out)), "the reader did not see it grow"
    _assert_same_as_local(out, local_gallery[0])
    local = local_gallery[1]
    assert {s["file"] for s in result["skipped"]} == {s["file"] for s in local["skipped"]}
    assert result["indexed"] == local["indexed"] and result["nodes"] == 2
    assert len(result["photos_per_node"]) == 2 and sum(result["photos_per_node"].values()) >= local["indexed"]
    assert result["commits"] >= 2


def test_driver_killed_mid_job_the_rerun_completes_nothing_doubled(pixel_bundle, album, local_gallery, cluster,
                                                                  tmp_path):
    from kidrr.gallery import open_gallery
    from kidrr.photos.ray_index import index_with_ray
    out = str(tmp_path / "ray.gallery")
    cmd = [os.path.join(os.path.dirname(sys.executable), "kidrr-index"), "--engine", "ray", "--address",
           cluster.address, "--bundle", pixel_bundle[0], "--images", album, "--out", out, "--workers", "2",
           "--segment-photos", str(SEGMENT), "--commit-every", "1", "--commit-seconds", "0"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _committed_worker(out)
    finally:
        os.kill(driver.pid, signal.SIGKILL)      # the driver process, by its id
        driver.wait()
    before = len(open_gallery(out))
    assert 0 < before < local_gallery[1]["indexed"], "the kill did not land mid-job"
    assert os.path.isdir(os.path.join(out, "staged"))
    record = index_with_ray(pixel_bundle[0], album, out, workers=2, segment_photos=SEGMENT, progress=False)
    _assert_same_as_local(out, local_gallery[0])
    assert record["already_indexed"] == before
    assert record["indexed"] + before == local_gallery[1]["indexed"]


def test_probe_every_node_and_refusals(pixel_bundle, album, cluster, tmp_path):
    import ray
    from kidrr.errors import InputError
    from kidrr.gallery import GalleryLocked, GalleryWriter, create_gallery
    from kidrr.photos.ray_index import check_probe, probe_shared_storage
    from kidrr.runtime import open_bundle
    staged = tmp_path / "staged"
    staged.mkdir()
    assert len(probe_shared_storage(ray, str(tmp_path), str(staged))) == 2
    assert os.listdir(staged) == [], "the probe left files behind"
    with pytest.raises(InputError, match="cannot write gallery .*filesystem every node"):
        check_probe({"a" * 20: None, "b" * 20: "PermissionError: denied"}, str(tmp_path))
    # a second job on a gallery being written is refused by the writer lock, before any work
    with open_bundle(pixel_bundle[0], threads=1) as rt:
        bid, regions, dim = rt.bundle_id, int(rt.bundle.image["regions"]), int(rt.bundle.model["embed_size"])
    out = str(tmp_path / "g")
    create_gallery(out, bid, regions=regions, dim=dim)
    from kidrr.photos.ray_index import index_with_ray
    with GalleryWriter(out), pytest.raises(GalleryLocked):
        index_with_ray(pixel_bundle[0], album, out, append=True, progress=False)


def test_bad_address_and_missing_extra(monkeypatch):
    from kidrr.errors import InputError
    from kidrr.photos.ray_index import check_address, require_ray
    t0 = time.monotonic()
    with pytest.raises(InputError, match="cannot reach the Ray head node"):
        check_address("127.0.0.1:1")
    assert time.monotonic() - t0 < 30
    for bad in ("nohost", "ray://10.0.0.1:10001", "host:99999"):
        with pytest.raises(InputError):
            check_address(bad)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(InputError, match=r"kidrr\[ray\]"):
        require_ray()


def test_staging_is_exactly_once_by_content(tmp_path):
    """Without Ray: a retried block lands on its key once; a double is removed at commit, a damaged staged
    segment is removed, not adopted."""
    from kidrr.gallery import GalleryWriter, create_gallery, open_gallery, verify
    from kidrr.gallery.layout import read_manifest
    from kidrr.gallery.staging import adopt_staged, content_key, make_staged_folder, stage_segment, staged_keys
    out = str(tmp_path / "g")
    create_gallery(out, "b" * 16, regions=3, dim=4)
    make_staged_folder(out)
    m = read_manifest(out)[0]
    rng = np.random.default_rng(0)

    def stage(ids):
        g, l = rng.standard_normal((len(ids), 4)), rng.standard_normal((len(ids), 3, 4))
        return content_key(m.bundle_id, ids), stage_segment(out, content_key(m.bundle_id, ids), m, len(ids),
                                                            [(g, l, ids)], {"node": "n", "pid": 1})
    k1, wrote = stage(["a", "b"])
    assert wrote and stage(["b", "a"]) == (k1, False)          # the same block again: not written twice
    k2, _ = stage(["c"])
    k3, _ = stage(["d", "e"])
    victim = os.path.join(out, "staged", k3, "globals.npy")
    with open(victim, "r+b") as fh:
        fh.seek(-1, 2)
        fh.write(b"\x01")
    with GalleryWriter(out) as w:
        first = adopt_staged(w, [k1])
    with GalleryWriter(out) as w:
        # k1 again as if staged twice by a dead job's rerun: all its ids are in -> a double
        k1b, _ = stage(["a", "b"])
        res = adopt_staged(w, [k1b, k2, k3])
    assert [a[0] for a in first["adopted"]] == [k1]
    assert res["doubles"] == [k1b] and [a[0] for a in res["adopted"]] == [k2] and res["broken"][0][0] == k3
    g = open_gallery(out)
    assert sorted(g.ids()) == ["a", "b", "c"] and verify(g) == [] and staged_keys(out) == []


def test_disk_full_simulated_in_a_workers_segment_write_fails_cleanly(pixel_bundle, album, cluster, tmp_path):
    """ENOSPC simulated in the worker: the actor class is wrapped so that, in the Ray worker process, the
    segment writer's file opener raises OSError(ENOSPC) on the third file of the segment holding photo10
    (a real full disk is not made here). The job fails with a message saying so; the gallery is as at
    its last commit (verify passes, no uncommitted segment folder) and no staging is left behind."""
    from kidrr.errors import DataError
    from kidrr.gallery import open_gallery, verify
    from kidrr.gallery.layout import read_manifest
    from kidrr.photos.ray_index import SegmentEncoder, index_with_ray

    class DiskFullOnPhoto10(SegmentEncoder):       # defined here: Ray ships it by value to the workers
        def __call__(self, batch):
            import errno
            import kidrr.gallery.writer as writer
            real = getattr(writer.write_segment, "real", writer.write_segment)
            full = any(str(n).startswith("photo10.") for n in batch["name"])

            def write_segment(*args, **kwargs):
                opened = []

                def opener(path, mode):
                    opened.append(path)
                    if full and len(opened) >= 3:
                        raise OSError(errno.ENOSPC, "No space left on device", path)
                    return open(path, mode)
                return real(*args, **dict(kwargs, opener=opener))
            write_segment.real = real
            writer.write_segment = write_segment
            return super().__call__(batch)

    out = str(tmp_path / "g")
    with pytest.raises(DataError, match="ran out of disk space") as info:
        index_with_ray(pixel_bundle[0], album, out, workers=2, segment_photos=SEGMENT, commit_every=1,
                       commit_seconds=0, progress=False, encoder=DiskFullOnPhoto10)
    assert "No space left" in str(info.value)
    if os.path.isdir(out):           # some segments may have been committed before the failing one
        manifest = read_manifest(out)[0]
        g = open_gallery(out)
        assert verify(g) == [] and len(g) == manifest.rows and "photo10.png" not in g.ids()
        committed = {seg.name for seg in manifest.segments}
        assert {n for n in os.listdir(out) if n.startswith("seg-")} == committed
        assert not os.path.exists(os.path.join(out, "staged")), "the failed job left its staging area behind"


def test_list_with_metadata_columns_ray_equals_local(pixel_bundle, album, cluster, tmp_path):
    from kidrr.gallery import open_gallery
    from kidrr.photos.index import index_folder
    from kidrr.photos.ray_index import index_with_ray
    lst = tmp_path / "photos.csv"
    chosen = [f"photo{i:02d}.{'jpg' if i % 2 else 'png'}" for i in range(0, 16, 2)]
    lst.write_text("path,album,n\n" + "".join(f"{album}/{n},a{i % 3},{i}\n" for i, n in enumerate(chosen))
                   + f"{album}/corrupt.jpg,bad,99\n")
    local = index_folder(pixel_bundle[0], album, str(tmp_path / "local"), threads=1, progress=False,
                         list_file=str(lst), exif=False)
    record = index_with_ray(pixel_bundle[0], album, str(tmp_path / "ray"), workers=2, segment_photos=3,
                            progress=False, list_file=str(lst), exif=False)
    _assert_same_as_local(str(tmp_path / "ray"), str(tmp_path / "local"))
    meta = [dict(zip(g.ids(), g.metadata(np.arange(len(g)))))
            for g in (open_gallery(str(tmp_path / "ray")), open_gallery(str(tmp_path / "local")))]
    assert meta[0] == meta[1] and meta[0][chosen[4]] == {"album": "a1", "n": 4} and len(meta[0]) == 8
    assert [s["file"] for s in record["skipped"]] == [s["file"] for s in local["skipped"]] == ["corrupt.jpg"]


def test_kidrr_features_engine_ray_equals_local_and_resumes_a_local_job(cluster, tmp_path, in_backbone_cache):
    """kidrr features --engine ray on both nodes finishes a local job interrupted after its first batch:
    the same files as one local run (features within 1e-6, same ids, captions and skips)."""
    from image_files import write_tsv
    from kidrr.images.features import extract_features
    folder = str(tmp_path / "photos")
    names = photo_folder(folder, 20, seed=7)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a jpeg")
    tsv = str(tmp_path / "caps.tsv")
    write_tsv(tsv, names[:6] + ["broken.jpg", "ghost.jpg"] + names[6:])

    def files(out):
        ims = np.load(os.path.join(out, "train_ims.npy"))
        record = json.load(open(os.path.join(out, "train_features.json")))
        text = [open(os.path.join(out, f"train_{k}.txt")).read() for k in ("ids", "caps")]
        return ims, text, {(s["file"], s["reason"]) for s in record["skipped"]}, record

    local = str(tmp_path / "local")
    extract_features(folder, tsv, local, batch_size=4, threads=1, progress=False)
    out = str(tmp_path / "ray")
    partial = extract_features(folder, tsv, out, batch_size=4, threads=1, progress=False, stop_after=1)
    assert partial["interrupted"] and partial["done"] == 4
    record = extract_features(folder, tsv, out, batch_size=4, engine="ray", workers=2, block_photos=4,
                              progress=False)
    want, got = files(local), files(out)
    assert got[0].shape == want[0].shape == (20, 49, 1280)
    assert np.abs(got[0].astype(np.float32) - want[0].astype(np.float32)).max() <= 1e-6
    assert got[1] == want[1] and got[2] == want[2] == {("broken.jpg", "not-an-image"), ("ghost.jpg", "missing")}
    assert record["engine"] == "ray" and len(record["photos_per_node"]) == 2, record.get("photos_per_node")
    assert sum(record["photos_per_node"].values()) == 16 and record["images"] == 20     # 4 came from the local run
    assert sorted(os.listdir(out)) == sorted(os.listdir(local))      # no partial files left


def test_kidrr_features_engine_ray_refusals(tmp_path):
    from kidrr.errors import DataError
    from kidrr.images.features import extract_features
    with pytest.raises(DataError, match="--strict is for the local engines"):
        extract_features(str(tmp_path), str(tmp_path / "caps.tsv"), str(tmp_path / "o"), engine="ray", strict=True)
    with pytest.raises(DataError, match="--address is for --engine ray"):
        extract_features(str(tmp_path), str(tmp_path / "caps.tsv"), str(tmp_path / "o"), address="h:1")
