"""kidrr.gallery: galleries on disk (format 2), a folder of memory-mapped segments with ids.

    from kidrr.gallery import create_gallery, GalleryWriter, open_gallery
    create_gallery("photos.gallery", rt.bundle_id, regions=49, dim=256)       # empty, fp16 locals
    with GalleryWriter("photos.gallery") as w:
        w.add(g.globals, g.locals, ["img001.jpg", ...])                        # one new segment
    gallery = open_gallery("photos.gallery", bundle_id=rt.bundle_id)
    rt.search_text("a dog on the grass", k=10, gallery=gallery, shortlist=100) # [(id, score)]

Data flows one way: this package uses kidrr.runtime; the runtime never imports it (the Retriever
reads a gallery through the GallerySource protocol). Spec: docs/gallery.md.
"""
from .convert import convert_v1
from .layout import FORMAT
from .reader import DiskGallery, open_gallery, verify
from .writer import GalleryLocked, GalleryWriter, create_gallery

__all__ = ["FORMAT", "DiskGallery", "open_gallery", "verify", "GalleryLocked", "GalleryWriter", "create_gallery",
           "convert_v1"]
