"""What the service is allowed to do: limits, batching, timeouts, and the bind/token rule."""
from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass

from kidrr.errors import ConfigError

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    max_shortlist: int = 1000
    max_caption_chars: int = 1000
    max_items: int = 64              # captions or images in one encode / score request
    max_pairs: int = 4096            # images x captions in one score request
    max_body_bytes: int = 8 << 20    # 8 MiB: one 49 x 1280 image as JSON is ~1.3 MB
    max_regions: int = 256           # regions per image sent as features (the shipped grids have 36 or 49)
    max_upload_bytes: int = 8 << 20  # an uploaded image file
    # Pixels of an uploaded image, read from its header before anything is decoded: 24 MP is a
    # 6000 x 4000 photo; decoding it and its RGB copy takes ~150 MB for the length of one request.
    max_upload_pixels: int = 24_000_000


@dataclass(frozen=True)
class Settings:
    limits: Limits = Limits()
    max_batch: int = 4               # queries encoded / searched together (see docs/serve.md: measured 4 vs 16)
    batch_wait_ms: float = 5.0       # how long a first request waits for company
    max_queue: int = 64              # waiting requests before 503
    workers: int = 2                 # local engine: batches run at once (each on its own thread)
    timeout_s: float = 10.0          # per request, then 504
    # Score / encode / image queries admitted at once (running or waiting for the work threads);
    # one more is answered 503 with Retry-After at once instead of queueing towards a 504.
    max_heavy: int = 8
    reload_check_s: float = 1.0      # how often a format-2 gallery's manifest is checked for a new generation
    token: str | None = None         # bearer token; None: no auth (loopback, or --insecure)
    ui: bool = True                  # the search page at / (serve/web); --no-ui turns it off

    def public(self) -> dict:
        """Settings as shown by /v1/info (never the token)."""
        out = asdict(self)
        out["token"] = self.token is not None
        return out


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """A non-loopback bind needs a token, unless the operator says --insecure explicitly."""
    if not is_loopback(host) and not token and not insecure:
        raise ConfigError(f"binding to {host} exposes the service beyond this machine; set an API token "
                          f"(KIDRR_SERVE_TOKEN or --token-file) or pass --insecure to run without one")
    if token is not None and not all(0x21 <= ord(c) <= 0x7e for c in token):
        # HTTP headers are bytes that clients send as ASCII (Latin-1 at most): a token with other
        # characters could never be sent by a UTF-8 client, so no one could authenticate.
        raise ConfigError("the API token must be printable ASCII without spaces (letters, digits, punctuation); "
                          "use e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if token is not None and len(token) < 16:
        raise ConfigError("the API token is shorter than 16 characters; use a long random one "
                          "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
