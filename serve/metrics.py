"""Prometheus metrics of one app: requests by route and status, latency histograms, errors by kind.

Each app has its own registry (not the process-wide default), so several apps in one process
(tests, the Ray ingress next to Ray's own metrics) never collide.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("kidrr_serve_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("kidrr_serve_latency_seconds", "request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("kidrr_serve_errors", "error responses by kind", ["kind"], registry=self.registry)
        self.batch_size = Histogram("kidrr_serve_batch_size", "text queries per search batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.in_flight = Gauge("kidrr_serve_in_flight", "requests being answered", registry=self.registry)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
