"""Items for gallery tests: unit-norm clustered vectors (neighbours exist) and a small gallery on disk."""
import numpy as np

BUNDLE_ID = "0123456789abcdef" * 4


def items(n, regions=3, dim=8, seed=0, clusters=20, start=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    c = rng.integers(0, clusters, n)
    g = centres[c] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    l = g[:, None, :] + 0.5 * rng.standard_normal((n, regions, dim)).astype(np.float32)
    l /= np.linalg.norm(l, axis=2, keepdims=True)
    return g.astype(np.float32), l.astype(np.float32), [f"photo-{start + i:05d}.jpg" for i in range(n)]


def item_meta(n, start=0):
    """Metadata of every kind for n items (every 7th item has none)."""
    return [{"album": ["beach", "city", "snow"][i % 3], "year": 2000 + i % 25, "taken": f"2019-07-{1 + i % 28:02d}",
             "tags": ["sea", "dog", "sun"][: i % 4], "fav": i % 5 == 0} if i % 7 else None
            for i in range(start, start + n)]


def item_thumbs(n, start=0):
    """A small real JPEG per item, each of its own colour (every 5th item has none)."""
    import io
    from PIL import Image
    out = []
    for i in range(start, start + n):
        if i % 5 == 4:
            out.append(None)
            continue
        buf = io.BytesIO()
        Image.new("RGB", (12, 8), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def make_gallery(folder, n=50, batches=2, locals_dtype="fp32", ann="ivf", ann_min_rows=10_000, regions=3, dim=8,
                 bundle_id=BUNDLE_ID, seed=0, metadata=False, thumbnails=False):
    from kidrr.gallery import GalleryWriter, create_gallery
    create_gallery(str(folder), bundle_id, regions, dim, locals_dtype, ann, ann_min_rows)
    g, l, ids = items(n, regions, dim, seed)
    meta = item_meta(n) if metadata else [None] * n
    thumbs = item_thumbs(n) if thumbnails else [None] * n
    cuts = np.linspace(0, n, batches + 1).astype(int)
    with GalleryWriter(str(folder)) as w:
        for a, b in zip(cuts[:-1], cuts[1:]):
            w.add(g[a:b], l[a:b], ids[a:b], meta[a:b] if metadata else None, thumbs[a:b] if thumbnails else None)
    return g, l, ids
