"""The one HTTP API (FastAPI), whichever engine answers: versioned paths, JSON in and out.

Every response names the bundle (field `bundle`, header X-Kidrr-Bundle). Errors are JSON
{"bundle", "error": {"kind", "message"}} with a 4xx for the caller's mistakes (malformed JSON 400,
bad token 401, too large 413, wrong fields / types / values 422), 503 when the queue is full or a
shard is down, 504 past the per-request timeout; the service keeps serving after any of them.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kidrr import __version__
from kidrr.errors import BundleError, ImageError, InputError, KidrrError, UnknownItem

from . import schemas
from .errors import NotAvailable, Overloaded, ShardUnavailable, TooLarge
from .items import item_answer, thumbnail_answer
from .metrics import Metrics
from .web import CSP, add_ui, ui_paths

log = logging.getLogger("kidrr.serve")
OPEN_PATHS = {"/v1/health"}          # liveness stays answerable without a token


def _error(status: int, kind: str, message: str, bundle: str | None, headers: dict | None = None):
    return JSONResponse({"bundle": bundle, "error": {"kind": kind, "message": message}}, status_code=status,
                        headers=headers)


class BodyLimit:
    """ASGI middleware: a body over max_bytes (declared, or counted as it streams in) gets 413 before
    the app sees any of it. The body is read here (at most max_bytes) and replayed to the app."""

    def __init__(self, app, max_bytes: int, bundle: str):
        self.app, self.max_bytes, self.bundle = app, max_bytes, bundle

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _error(413, "too_large", f"request body over the {self.max_bytes}-byte limit", self.bundle)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if declared is not None and int(declared) > self.max_bytes:
                return await too_big(scope, receive, send)
        except ValueError:
            return await _error(400, "bad_request", "Content-Length is not a number", self.bundle)(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":      # the client went away: nothing to answer
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await too_big(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()                       # then disconnect notices, as the server sends them

        await self.app(scope, replay, send)


def _responses(*codes) -> dict:
    """OpenAPI entries of the error answers a route can give: all share one body (schemas.ErrorResponse)."""
    why = {400: "malformed JSON or header", 401: "missing or wrong bearer token", 404: "not available on this service",
           413: "over a size limit (body, upload, pixels)", 422: "a field's type or value is not accepted",
           500: "a fault of the service (logged)", 503: "busy or a shard is down: retry after Retry-After seconds",
           504: "no answer within the per-request timeout"}
    return {c: {"model": schemas.ErrorResponse, "description": why[c]} for c in codes}


def _json_errors(*codes) -> dict:
    """The same, for a route whose own answer is not JSON (errors still are)."""
    ref = {"$ref": "#/components/schemas/ErrorResponse"}    # registered by the JSON routes' models
    return {c: dict(entry, content={"application/json": {"schema": ref}})
            for c, entry in ((c, {"description": e["description"]}) for c, e in _responses(*codes).items())}


COMMON = (400, 401, 413, 500, 503)       # any route: bad header/body, token, body size, fault, overload


def _constrain(prop: dict, **rules) -> None:
    """Add JSON-schema rules to a property (to its non-null branch when it is Optional)."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch.update(rules)


def _document_limits(schema: dict, limits, feature_size: int | None = None) -> dict:
    """The start-up limits (and the bundle's feature size F), written into the OpenAPI schema so it
    says what this service accepts."""
    bodies = schema.get("components", {}).get("schemas", {})
    matrix_rules = {"minItems": 1, "maxItems": limits.max_regions}     # one image: regions x F
    row_rules = {"minItems": feature_size, "maxItems": feature_size} if feature_size else {}
    for name, field, nested in (("ImageSearch", "features", False), ("ScoreRequest", "features", True),
                                ("EncodeRequest", "features", True)):
        prop = bodies.get(name, {}).get("properties", {}).get(field)
        for branch in (prop or {}).get("anyOf", [prop] if prop else []):
            if branch.get("type") != "array":
                continue
            matrix = branch["items"] if nested else branch
            if matrix.get("type") == "array":
                matrix.update(matrix_rules)
                if isinstance(matrix.get("items"), dict):
                    matrix["items"].update(row_rules)
    for name in ("TextSearch", "ImageSearch", "SimilarSearch"):
        props = bodies.get(name, {}).get("properties", {})
        if "dedup" in props:
            _constrain(props["dedup"], exclusiveMinimum=0, maximum=1)
        if "k" in props:
            _constrain(props["k"], minimum=1, maximum=limits.max_k)
        if "shortlist" in props:
            _constrain(props["shortlist"], minimum=1, maximum=limits.max_shortlist)
    if "query" in bodies.get("TextSearch", {}).get("properties", {}):
        _constrain(bodies["TextSearch"]["properties"]["query"], minLength=1, maxLength=limits.max_caption_chars)
    for name in ("ScoreRequest", "EncodeRequest"):
        props = bodies.get(name, {}).get("properties", {})
        for field in ("captions", "features"):
            if field in props:
                _constrain(props[field], maxItems=limits.max_items)
    return schema


def _check_limits(limits, k: int | None = None, shortlist: int | None = None, captions=(), items: int = 0):
    if k is not None and not 1 <= k <= limits.max_k:
        raise InputError(f"k must be in 1..{limits.max_k} on this service, got {k}")
    if shortlist is not None and not 1 <= shortlist <= limits.max_shortlist:
        raise InputError(f"shortlist (k') must be in 1..{limits.max_shortlist} on this service, got {shortlist}")
    for i, c in enumerate(captions):
        if not c.strip():
            raise InputError(f"caption {i} is empty; send words to search for")
        if len(c) > limits.max_caption_chars:
            raise InputError(f"caption {i} has {len(c)} characters, more than the {limits.max_caption_chars} allowed")
    if items > limits.max_items:
        raise InputError(f"{items} items in one request, more than the {limits.max_items} allowed; split it")


def create_app(engine, settings) -> FastAPI:
    """The FastAPI app over an engine. The app starts and stops the engine with its lifespan."""
    metrics = Metrics()
    bundle = engine.bundle_id
    limits = settings.limits

    @asynccontextmanager
    async def lifespan(app):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()     # uvicorn calls this after the in-flight requests have finished

    app = FastAPI(title="kidrr serve", version=__version__, lifespan=lifespan,
                  description="Image-text retrieval with a KIDRR bundle (docs/serve.md).")
    app.state.engine, app.state.metrics = engine, metrics
    open_paths = OPEN_PATHS | (ui_paths() if settings.ui else set())   # the page's own files hold no data

    def reject(status: int, kind: str, message: str, headers=None):
        metrics.errors.labels(kind).inc()
        return _error(status, kind, message, bundle, headers)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        started = time.perf_counter()
        route = request.url.path
        if settings.token and route not in open_paths:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
                response = reject(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)",
                                  {"WWW-Authenticate": "Bearer"})
                metrics.observe("unauthenticated", 401, time.perf_counter() - started)   # no raw paths as labels
                return response
        metrics.in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            metrics.in_flight.dec()
        response.headers["X-Kidrr-Bundle"] = bundle
        matched = request.scope.get("route")    # the route's template, never the raw path (bounded labels)
        metrics.observe(matched.path if matched is not None else "unmatched", response.status_code,
                        time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        if not malformed and any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors):
            try:                       # a body error on a body that is not JSON at all: say so
                json.loads(await request.body() or b"null")
            except ValueError:
                malformed = True
        if malformed:
            return reject(400, "malformed_json", "the body is not valid JSON; send a JSON object")
        parts = []
        for e in errors[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return reject(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Routing and parsing errors of the framework (404, 405, a body it cannot parse): the one error shape.
        kinds = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        headers = getattr(exc, "headers", None)
        return reject(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), headers)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError):
        if isinstance(exc, ImageError) and exc.reason == "too-large":
            return reject(413, "too_large", str(exc))
        return reject(422, "invalid_input", str(exc))

    @app.exception_handler(UnknownItem)
    async def unknown_item(request: Request, exc: UnknownItem):
        return reject(404, "unknown_item", str(exc))

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge):
        return reject(413, "too_large", str(exc))

    @app.exception_handler(NotAvailable)
    async def missing(request: Request, exc: NotAvailable):
        return reject(404, "not_available", str(exc))

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        return reject(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ShardUnavailable)
    async def shard_down(request: Request, exc: ShardUnavailable):
        return reject(503, "shard_unavailable", str(exc), {"Retry-After": "1"})

    @app.exception_handler(asyncio.TimeoutError)
    async def timed_out(request: Request, exc: Exception):
        return reject(504, "timeout", f"no answer within {settings.timeout_s} s; the service is busy, retry later")

    @app.exception_handler(KidrrError)
    async def kidrr_error(request: Request, exc: KidrrError):
        status = 500 if isinstance(exc, BundleError) else 422
        return reject(status, type(exc).__name__, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return reject(500, "internal", f"internal error ({type(exc).__name__}); see the service log")

    async def within_timeout(coro):
        return await asyncio.wait_for(coro, settings.timeout_s)

    def finite(x: float) -> float:
        if not math.isfinite(x):   # never send a NaN ranking: a server-side fault (500), logged
            raise RuntimeError("the model produced a non-finite score; the bundle or gallery is broken")
        return x

    @app.get("/v1/health", summary="liveness: the process answers", responses=_responses(500))
    async def health():
        return {"bundle": bundle, "status": "alive"}

    @app.get("/v1/ready", summary="readiness: every part can answer queries (a gallery's new generation "
             "that cannot be opened makes it false)", responses=_responses(*COMMON))
    async def ready():
        ok, detail = await engine.ready()
        return JSONResponse({"bundle": bundle, "ready": ok, "detail": detail}, status_code=200 if ok else 503)

    @app.get("/v1/info", summary="bundle, gallery, engine and limits", responses=_responses(*COMMON))
    async def info():
        return dict(engine.info(), settings=settings.public())

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", include_in_schema=True,
             response_class=PlainTextResponse, responses=_json_errors(*COMMON))
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.post("/v1/search/images", response_model=schemas.TextSearchResponse, responses=_responses(*COMMON, 422, 504),
              summary="images for a caption (exact, or two-stage with shortlist k')")
    async def search_images(body: schemas.TextSearch):
        _check_limits(limits, body.k, body.shortlist, [body.query])
        hits = await within_timeout(engine.search_text(body.query, body.k, body.shortlist, body.where, body.dedup))
        return {"bundle": bundle, "k": body.k, "shortlist": body.shortlist, "results": image_hits(hits)}

    def image_hits(hits) -> list:
        ids = engine.catalog.ids      # v1 gallery: labels are positions; format 2: labels are the ids
        return [{"id": ids[p], "position": p, "score": finite(s)} if ids is not None else
                {"id": p, "position": None, "score": finite(s)} for p, s in hits]

    @app.post("/v1/search/similar", response_model=schemas.SimilarResponse,
              responses=_responses(*COMMON, 404, 422, 504),
              summary="images like an item of the gallery (its stored global; the item itself is left out)",
              description="Ranked by the globals' cosine (the first stage; no rerank: the similarity graph "
                          "scores images against captions). 404 unknown_item when no live item has the id.")
    async def search_similar(body: schemas.SimilarSearch):
        _check_limits(limits, body.k)
        hits = await within_timeout(engine.search_like_id(body.id, body.k, body.where, body.dedup))
        return {"bundle": bundle, "k": body.k, "results": image_hits(hits)}

    @app.post("/v1/search/similar/image", response_model=schemas.SimilarResponse,
              responses=_responses(*COMMON, 404, 422, 504),
              summary="images like a photo sent as the raw body (JPEG, PNG...; bundles with image graphs)",
              description=f"Ranked by the globals' cosine. where: the filter as JSON text. At most "
                          f"{limits.max_upload_bytes:,} bytes and {limits.max_upload_pixels:,} pixels; larger: 413.",
              openapi_extra={"requestBody": {"required": True, "content": {"image/*": {"schema": {
                  "type": "string", "format": "binary", "maxLength": limits.max_upload_bytes}}}}})
    async def search_similar_by_file(request: Request, k: int = Query(10, ge=1, le=limits.max_k),
                                     where: str | None = Query(None, max_length=65536, description=schemas.WHERE_DOC),
                                     dedup: float | None = Query(None, gt=0, le=1, description=schemas.DEDUP_DOC)):
        _check_limits(limits, k)
        data = await request.body()
        if not data:
            raise InputError("send the image file as the request body (Content-Type: image/jpeg, image/png...)")
        parsed = None
        if where is not None:
            from kidrr.gallery.filters import parse_filter
            parsed = parse_filter(where)
        hits = await within_timeout(engine.search_like_file(data, k, parsed, dedup))
        return {"bundle": bundle, "k": k, "results": image_hits(hits)}

    # Ids may hold "/" (kidrr index ids are relative paths), so {item_id:path}; the thumbnail route is
    # registered first, so an id that itself ends in "/thumbnail" names that item's thumbnail.
    item_path = Path(..., min_length=1, max_length=4096, description="the item's id (URL-encoded)")

    @app.get("/v1/items/{item_id:path}/thumbnail", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "the item's thumbnail JPEG "
                              "(longest side 256; ETag; If-None-Match gives 304)"},
                        **_json_errors(*COMMON, 404, 422, 504)},
             summary="an item's thumbnail (image/jpeg); 404 unknown_item, or not_available when it has none")
    async def item_thumbnail(request: Request, item_id: str = item_path):
        found = await within_timeout(engine.find_item(item_id, thumbnail=True))
        jpeg, etag = thumbnail_answer(item_id, found)
        # Private: with a token the answer belongs to that caller. A week: ids are stable, and the ETag
        # (a hash of the bytes) revalidates a re-added item that got another photo.
        headers = {"ETag": etag, "Cache-Control": "private, max-age=604800", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": CSP}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @app.get("/v1/items/{item_id:path}", response_model=schemas.ItemResponse,
             responses=_responses(*COMMON, 404, 422, 504),
             summary="an item of the gallery: its id, metadata, and whether it has a thumbnail")
    async def item(item_id: str = item_path):
        found = await within_timeout(engine.find_item(item_id))
        return dict(item_answer(item_id, found), bundle=bundle)

    @app.post("/v1/search/captions", response_model=schemas.ImageSearchResponse,
              responses=_responses(*COMMON, 404, 422, 504),
              summary="captions for an image given as region features (R, F)")
    async def search_captions(body: schemas.ImageSearch):
        _check_limits(limits, body.k, body.shortlist)
        hits = await within_timeout(engine.search_image(body.features, body.k, body.shortlist))
        texts = engine.catalog.captions
        return {"bundle": bundle, "k": body.k, "shortlist": body.shortlist,
                "results": [{"position": p, "caption": texts[p], "score": finite(s)} for p, s in hits]}

    @app.post("/v1/search/captions/image", response_model=schemas.ImageSearchResponse,
              responses=_responses(*COMMON, 404, 422, 504),
              summary="captions for an image file sent as the raw body (JPEG, PNG...; bundles with image graphs)",
              description=f"At most {limits.max_upload_bytes:,} bytes and {limits.max_upload_pixels:,} pixels "
                          f"(read from the file's header before decoding); larger: 413.",
              openapi_extra={"requestBody": {"required": True, "content": {"image/*": {"schema": {
                  "type": "string", "format": "binary", "maxLength": limits.max_upload_bytes}}}}})
    async def search_captions_by_file(request: Request, k: int = Query(10, ge=1, le=limits.max_k),
                                      shortlist: int | None = Query(None, ge=1, le=limits.max_shortlist)):
        _check_limits(limits, k, shortlist)
        data = await request.body()
        if not data:
            raise InputError("send the image file as the request body (Content-Type: image/jpeg, image/png...)")
        hits = await within_timeout(engine.search_image_file(data, k, shortlist))
        texts = engine.catalog.captions
        return {"bundle": bundle, "k": k, "shortlist": shortlist,
                "results": [{"position": p, "caption": texts[p], "score": finite(s)} for p, s in hits]}

    @app.post("/v1/score", response_model=schemas.ScoreResponse, responses=_responses(*COMMON, 422, 504),
              summary="scores of every given image (features) with every given caption")
    async def score(body: schemas.ScoreRequest):
        _check_limits(limits, captions=body.captions, items=max(len(body.captions), len(body.features)))
        if len(body.captions) * len(body.features) > limits.max_pairs:
            raise InputError(f"{len(body.features)} x {len(body.captions)} pairs, more than the "
                             f"{limits.max_pairs} allowed in one request")
        if not body.captions or not body.features:
            raise InputError("give at least one caption and one image")
        scores = await within_timeout(engine.score(body.features, body.captions))
        return {"bundle": bundle, "scores": scores.tolist()}

    @app.post("/v1/encode", response_model=schemas.EncodeResponse, responses=_responses(*COMMON, 422, 504),
              summary="global embeddings of captions and/or images")
    async def encode(body: schemas.EncodeRequest):
        captions = body.captions or []
        _check_limits(limits, captions=captions, items=max(len(captions), len(body.features or [])))
        if not captions and not body.features:
            raise InputError("give captions, features or both")
        out = await within_timeout(engine.encode(captions or None, body.features or None))
        return dict({"bundle": bundle}, **{key: value.tolist() for key, value in out.items()})

    def openapi():
        if app.openapi_schema is None:
            app.openapi_schema = _document_limits(get_openapi(title=app.title, version=app.version,
                                                              description=app.description, routes=app.routes), limits,
                                                  getattr(engine.retriever, "feature_size", None))
        return app.openapi_schema
    app.openapi = openapi

    if settings.ui:
        add_ui(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, bundle=bundle)   # outermost: before parsing
    return app
