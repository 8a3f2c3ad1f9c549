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


@dataclass(frozen=True)
class Settings:
    limits: Limits = Limits()
    max_batch: int = 4               # queries encoded / searched together (see docs/serve.md: measured 4 vs 16)
    batch_wait_ms: float = 5.0       # how long a first request waits for company
    max_queue: int = 64              # waiting requests before 503
    workers: int = 2                 # local engine: batches run at once (each on its own thread)
    timeout_s: float = 10.0          # per request, then 504
    token: str | None = None         # bearer token; None: no auth (loopback, or --insecure)

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
    if token is not None and len(token) < 16:
        raise ConfigError("the API token is shorter than 16 characters; use a long random one "
                          "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
