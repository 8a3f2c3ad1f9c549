"""Items by id: what `GET /v1/items/{id}` and `GET /v1/items/{id}/thumbnail` answer, for both engines.

A shard looks the id up in its own snapshot (format-2 galleries: the id table; a v1 .npz gallery
has neither metadata nor thumbnails) and answers None when the id is not live there, so the engine
asks its shards in turn (the local engine in process, the ray engine each shard deployment) and
the one that holds the item answers. Nothing here ever builds a path from the request: the id is
looked up in the gallery's own tables and the bytes come from its mapped segment.
"""
from __future__ import annotations

import hashlib

from kidrr.errors import UnknownItem

from .errors import NotAvailable


def lookup_item(searcher, label, thumbnail: bool = False) -> dict | None:
    """{"metadata", "thumbnail": bool, "jpeg": bytes | None (only when asked)} of a live item of one
    shard (a ShardSearcher), or None when the shard does not hold it. label: a format-2 id, or a v1
    gallery position."""
    searcher.refresh()
    source = searcher.source            # one snapshot for the whole lookup
    if not hasattr(source, "find"):     # a v1 in-memory gallery: the position names the item
        offset = searcher.offset or 0
        if not isinstance(label, int) or not 0 <= label - offset < len(source):
            return None
        return {"metadata": {}, "thumbnail": False, "jpeg": None}
    if not isinstance(label, str):
        return None
    row = source.find([label]).get(label)
    if row is None:
        return None
    jpeg = source.thumbnails([row])[0] if source.has_thumbnails else None
    return {"metadata": source.metadata([row])[0], "thumbnail": jpeg is not None,
            "jpeg": jpeg if thumbnail else None}


def not_found(item) -> UnknownItem:
    return UnknownItem(f"no item {str(item)[:200]!r} in this gallery (removed, or never added)")


def item_answer(item, found: dict | None) -> dict:
    if found is None:
        raise not_found(item)
    return {"id": item, "metadata": found["metadata"], "thumbnail": found["thumbnail"]}


def thumbnail_answer(item, found: dict | None) -> tuple[bytes, str]:
    """(JPEG bytes, strong ETag: a hash of the bytes, so a re-added item with another photo gets another)."""
    if found is None:
        raise not_found(item)
    if found["jpeg"] is None:
        raise NotAvailable(f"item {str(item)[:200]!r} has no thumbnail (its gallery was indexed with "
                           f"--no-thumbnails, or made without them); show its id instead")
    return found["jpeg"], '"' + hashlib.sha256(found["jpeg"]).hexdigest()[:32] + '"'


def gallery_fields(catalog) -> dict:
    """Metadata field -> type over the catalog's format-2 shards (read from their manifests: the ray
    engine's ingress holds no gallery), for /v1/info; {} for a v1 gallery."""
    from kidrr.gallery.layout import field_schema, read_manifest
    fields: dict = {}
    for spec in catalog.shards:
        if spec.on_disk:
            try:
                fields.update(field_schema(read_manifest(spec.path)[0]))
            except Exception:        # a gallery mid-restore: /v1/ready says so; info just omits its fields
                continue
    return dict(sorted(fields.items()))


def gallery_has_thumbnails(catalog) -> bool:
    from kidrr.gallery.layout import read_manifest
    for spec in catalog.shards:
        if spec.on_disk:
            try:
                if any(s.thumbnails for s in read_manifest(spec.path)[0].segments):
                    return True
            except Exception:
                continue
    return False
