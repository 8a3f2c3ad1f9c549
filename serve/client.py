"""A small Python client for kidrr serve (httpx). Errors come back as ServiceError with the
service's own kind and message; retries (with backoff) only on 503 (queue full, shard restarting)
and on connection errors, since every call is read-only."""
from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import numpy as np

from kidrr.errors import KidrrError


class ServiceError(KidrrError):
    """The service answered with an error: status, kind (e.g. 'invalid_input') and its message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind, self.message = status, kind, message


def _features(x) -> list:
    arr = np.asarray(x, dtype=np.float32)
    return arr.tolist()


class Client:
    """client = Client("http://127.0.0.1:8000", token=None); client.search_images("a dog", k=5)"""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 30.0,
                 retries: int = 2, backoff_s: float = 0.5, transport=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport,
                                 trust_env=False)   # never route a loopback call through a proxy
        self.retries, self.backoff_s = retries, backoff_s
        self.bundle: str | None = None

    def _call(self, method: str, path: str, body=None, raw: bool = False, **request):
        for attempt in range(self.retries + 1):
            try:
                response = self.http.request(method, path, json=body, **request)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise ServiceError(0, "unreachable", f"{self.http.base_url}: {exc}") from exc
            else:
                if response.status_code != 503 or attempt == self.retries:
                    break
            time.sleep(self.backoff_s * (attempt + 1))
        if raw and response.status_code == 200:
            return response.content
        try:
            data = response.json()
        except ValueError:
            raise ServiceError(response.status_code, "not_json", response.text[:200]) from None
        if response.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            raise ServiceError(response.status_code, err.get("kind", "http_error"),
                               err.get("message", response.text[:200]))
        self.bundle = data.get("bundle", self.bundle) if isinstance(data, dict) else self.bundle
        return data

    def health(self) -> dict:
        return self._call("GET", "/v1/health")

    def ready(self) -> bool:
        """True once the service answers queries; False while it starts, restarts or is unreachable."""
        try:
            return bool(self.http.get("/v1/ready").json().get("ready"))
        except (httpx.TransportError, ValueError, AttributeError):
            return False

    def info(self) -> dict:
        return self._call("GET", "/v1/info")

    def search_images(self, query: str, k: int = 10, shortlist: int | None = None, where: dict | None = None,
                      dedup: float | None = None) -> list:
        """[{'id', 'position', 'score'}] best first. where: a metadata filter ({"album": "beach"}),
        dedup: collapse near-duplicates above this globals cosine."""
        body = {"query": query, "k": k, "shortlist": shortlist, "where": where, "dedup": dedup}
        return self._call("POST", "/v1/search/images", body)["results"]

    def search_similar(self, item_id, k: int = 10, where: dict | None = None, dedup: float | None = None) -> list:
        """Items like an item of the gallery (by its stored global; itself left out): [{'id', 'position', 'score'}].
        ServiceError 404 unknown_item for an id the gallery does not hold."""
        body = {"id": item_id, "k": k, "where": where, "dedup": dedup}
        return self._call("POST", "/v1/search/similar", body)["results"]

    def search_similar_by_file(self, path: str, k: int = 10, where: dict | None = None,
                               dedup: float | None = None) -> list:
        """Items like a photo file (JPEG, PNG...; bundles with image graphs): [{'id', 'position', 'score'}]."""
        import json
        with open(path, "rb") as fh:
            data = fh.read()
        params = {"k": k}
        if where is not None:
            params["where"] = json.dumps(where)
        if dedup is not None:
            params["dedup"] = dedup
        return self._call("POST", "/v1/search/similar/image", content=data, params=params,
                          headers={"content-type": "application/octet-stream"})["results"]

    def item(self, item_id: str) -> dict:
        """{"id", "metadata", "thumbnail": bool} of a live item; ServiceError 404 for an unknown id."""
        return self._call("GET", "/v1/items/" + quote(str(item_id), safe=""))

    def thumbnail(self, item_id: str) -> bytes:
        """The item's thumbnail JPEG; ServiceError 404 (unknown_item, or not_available: it has none)."""
        return self._call("GET", "/v1/items/" + quote(str(item_id), safe="") + "/thumbnail", raw=True)

    def search_captions(self, features, k: int = 10, shortlist: int | None = None) -> list:
        """features: (R, F) region features of one image -> [{'position', 'caption', 'score'}]."""
        body = {"features": _features(features), "k": k, "shortlist": shortlist}
        return self._call("POST", "/v1/search/captions", body)["results"]

    def search_captions_by_file(self, path: str, k: int = 10, shortlist: int | None = None) -> list:
        """An image file (JPEG, PNG...) -> [{'position', 'caption', 'score'}]; bundles with image graphs."""
        with open(path, "rb") as fh:
            data = fh.read()
        params = {"k": k} if shortlist is None else {"k": k, "shortlist": shortlist}
        return self._call("POST", "/v1/search/captions/image", content=data, params=params,
                          headers={"content-type": "application/octet-stream"})["results"]

    def score(self, features, captions: list) -> np.ndarray:
        """(n, R, F) features x m captions -> (n, m) scores."""
        body = {"features": _features(features), "captions": list(captions)}
        return np.asarray(self._call("POST", "/v1/score", body)["scores"], dtype=np.float32)

    def encode(self, captions: list | None = None, features=None) -> dict:
        body = {"captions": captions, "features": None if features is None else _features(features)}
        out = self._call("POST", "/v1/encode", body)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items() if k.endswith("_globals") and v}

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
