"""Per-call latency of the three runtime operations at several batch sizes, through the public API.

What one call includes (stated in every report):
  image encoding    Retriever.encode_images(features (b, R, F)): input checks, the image encoder,
                    assembling the Gallery; host arrays in and out (a GPU backend's copies included)
  caption encoding  Retriever.encode_texts(b caption strings): tokenisation with the bundle's
                    vocabulary, length sort, padding, the text encoder, assembling the CaptionIndex
  scoring           Retriever.score(gallery of b images, 1 encoded caption): one query against b
                    images (the rerank call of two-stage search at k'=b), tiling and the similarity
                    graph, scores back on the host
"""
from __future__ import annotations

from kidrr.runtime import Gallery

from .timing import sample, summarise

INCLUDES = {
    "image_encode": "encode_images(b images): input checks + image encoder + Gallery; host in/out",
    "caption_encode": "encode_texts(b strings): tokenisation + sort/pad + text encoder + CaptionIndex; host in/out",
    "score": "score(b images x 1 caption), both pre-encoded: tiling + similarity graph; host in/out; "
             "throughput in pairs/s",
}


def measure_latency(rt, split, batch_sizes: list, duration: float, progress=lambda msg: None) -> dict:
    """{op: {batch: summary}}; batch sizes above the number of images are left out."""
    sizes = [b for b in batch_sizes if b <= len(split.images)]
    out = {op: {} for op in INCLUDES}
    feats = split.images[:max(sizes)]
    gallery = rt.encode_images(feats)
    query = rt.encode_texts(split.captions[:1])
    for b in sizes:
        progress(f"latency, batch {b}")
        batch_feats = feats[:b]
        out["image_encode"][b] = summarise(sample(lambda: rt.encode_images(batch_feats), duration), b)
        captions = split.captions[:b]
        out["caption_encode"][b] = summarise(sample(lambda: rt.encode_texts(captions), duration), b)
        sub = Gallery(gallery.locals[:b], gallery.globals[:b], gallery.bundle_id)
        out["score"][b] = summarise(sample(lambda: rt.score(sub, query), duration), b)
    return out
