"""kidrr.runtime: serve a kidrr bundle with numpy + onnxruntime (torch optional, never imported here).

    from kidrr.runtime import open_bundle
    rt = open_bundle("bundle/", backend="ort", threads=2)
    gallery = rt.encode_images(features)          # (n, R, F) -> Gallery; gallery.save("g.npz")
    rt.score(gallery, ["a dog on the grass"])      # (n, 1)
    rt.search_text("a dog on the grass", k=5, gallery=gallery, shortlist=100)

See docs/runtime.md.
"""
from .bundle import Bundle, load_bundle
from .captions import CaptionTruncatedWarning
from .gallery import CaptionIndex, Gallery
from .retriever import Retriever, open_bundle
from .runner import BACKENDS, Runner, available_backends, load_runner

__all__ = ["Bundle", "load_bundle", "CaptionTruncatedWarning", "CaptionIndex", "Gallery", "Retriever",
           "open_bundle", "BACKENDS", "Runner", "available_backends", "load_runner"]
