"""One runtime shared by 8 threads returns exactly what serial calls return."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import test_runtime_helpers as helpers
from kidrr.runtime import open_bundle


def test_eight_threads_match_serial(tmp_path):
    bundle = helpers.make_bundle(helpers.small_checkpoint(tmp_path / "ckpt"), tmp_path / "bundle")
    rt = open_bundle(bundle, threads=1, tiles=(3, 2))
    gallery = rt.encode_images(helpers.random_features(10, seed=1))
    rt.use_gallery(gallery)
    rt.use_captions(helpers.CAPTIONS)
    jobs = []
    for t in range(32):
        cap = helpers.CAPTIONS[t % len(helpers.CAPTIONS)]
        feats = helpers.random_features(1 + t % 3, seed=100 + t)
        jobs.append((cap, feats))

    def work(job):
        cap, feats = job
        return (rt.score(gallery, [cap, "a dog"]), rt.search_text(cap, 3), rt.search_text(cap, 2, shortlist=4),
                rt.search_image(feats, 2), rt.encode_images(feats).globals)

    serial = [work(j) for j in jobs]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(work, jobs))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        np.testing.assert_array_equal(a[4], b[4])
