"""The search page at `/`: three static files packaged with kidrr (serve/page), no build step, no CDN.

The page uses only the public API (docs/web.md). Its files hold no data, so they are served without
the token (a browser cannot send an Authorization header when it navigates); everything the page
then fetches goes through the token check like any other client. The Content-Security-Policy allows
scripts, styles and images from this origin only (plus blob: URLs, which is how thumbnails fetched
with the token are shown), nothing inline and no eval.
"""
from __future__ import annotations

import os

from fastapi.responses import Response

PAGE_DIR = os.path.join(os.path.dirname(__file__), "page")
# URL path -> (file in PAGE_DIR, content type): a fixed table, never a path taken from the request.
FILES = {"/": ("index.html", "text/html; charset=utf-8"),
         "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
         "/ui/icon.svg": ("icon.svg", "image/svg+xml")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def ui_paths() -> set:
    return set(FILES)


def page_bytes() -> dict:
    """URL path -> the file's bytes (read once: the page is small, ~30 KB in all)."""
    out = {}
    for path, (name, _) in FILES.items():
        with open(os.path.join(PAGE_DIR, name), "rb") as fh:
            out[path] = fh.read()
    return out


def add_ui(app) -> None:
    files = page_bytes()
    for path, (_, media_type) in FILES.items():
        def serve_file(path=path, media_type=media_type):
            return Response(files[path], media_type=media_type, headers=HEADERS)
        app.add_api_route(path, serve_file, methods=["GET"], include_in_schema=False, name=f"ui:{path}")
