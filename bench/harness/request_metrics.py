"""Request metrics for the generated service, measured before they are added (``throughput.py
--request-metrics``): the baked app as it is, against the same app wrapped by each candidate.

Each variant is a module of its own in the bench's apps directory that imports the baked
``<package>.api:app`` and instruments it before the server starts it; the project is not changed.
All of them run in prometheus-client's multiprocess mode exactly as the service runs its own
metrics: each variant first calls ``<package>.metrics.worker_metrics()``, which chooses the
server's directory, sets ``PROMETHEUS_MULTIPROC_DIR`` and switches prometheus-client to its
multiprocess values; only then are the request metrics created (metrics created earlier would be
kept in the worker's memory, cheaper, and missing from ``GET /metrics``). ``exposes`` checks that
the request metrics do show up in the service's own ``GET /metrics``.

* ``none``: the baked app as it is (the yardstick).
* ``asgi``: a hand-written pure-ASGI middleware, the least the usual request metrics can cost: a
  counter by method, route template and status, and a duration histogram (prometheus-client's
  default buckets) by method and route template.
* ``asgi_counter``: the same middleware with the counter only (no durations).
* ``asgi_counter_batched``: the counter only, counted in the worker's memory and added to the
  multiprocess counter once a second (what the per-request file write costs).
* ``instrumentator``: prometheus-fastapi-instrumentator, ``Instrumentator().instrument(app)``
  (its default metrics: requests, durations, request and response sizes).
* ``starlette_exporter``: starlette-exporter, ``app.add_middleware(PrometheusMiddleware)``
  (requests, durations, requests in progress).
"""

from __future__ import annotations

import importlib.util
import urllib.request
from pathlib import Path

HEADER = '''"""{doc}"""
from {package}.api import app
from {package}.metrics import worker_metrics

worker_metrics()  # the service's multiprocess directory, chosen before any request metric exists
'''

ASGI_MIDDLEWARE = '''
import time

from prometheus_client import Counter, Histogram

HISTOGRAM = {histogram}
REQUESTS = Counter("http_requests", "HTTP requests", ["method", "route", "status"])
DURATION = Histogram("http_request_duration_seconds", "HTTP request duration", ["method", "route"])


class RequestMetrics:
    """Pure ASGI: counts each HTTP request by route template (not raw path) once it is answered."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "<unmatched>")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            if HISTOGRAM:
                DURATION.labels(scope["method"], route).observe(time.perf_counter() - started)


app.add_middleware(RequestMetrics)
'''

BATCHED_COUNTER = '''
import asyncio
from collections import Counter as Tally

from prometheus_client import Counter

REQUESTS = Counter("http_requests", "HTTP requests", ["method", "route", "status"])
FLUSH_SECONDS = 1.0


class RequestMetrics:
    """Pure ASGI: counts each HTTP request by route template in this worker's memory, and adds the
    counts to the multiprocess counter once a second (a scrape may lag by up to that)."""

    def __init__(self, app):
        self.app = app
        self.tally = Tally()
        self.flusher = None

    async def flush(self):
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            tally, self.tally = self.tally, Tally()
            for labels, count in tally.items():
                REQUESTS.labels(*labels).inc(count)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.flusher is None:
            self.flusher = asyncio.ensure_future(self.flush())
        status = 500

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = getattr(scope.get("route"), "path", "<unmatched>")
            self.tally[scope["method"], route, status] += 1


app.add_middleware(RequestMetrics)
'''

VARIANTS: dict[str, tuple[str | None, str, str]] = {
    # name: (package it needs, module body after HEADER, a metric name GET /metrics must then show)
    "asgi": (None, ASGI_MIDDLEWARE.format(histogram=True), "http_request_duration_seconds_bucket"),
    "asgi_counter": (None, ASGI_MIDDLEWARE.format(histogram=False), "http_requests_total"),
    "asgi_counter_batched": (None, BATCHED_COUNTER, "http_requests_total"),
    "instrumentator": (
        "prometheus_fastapi_instrumentator",
        """
from prometheus_fastapi_instrumentator import Instrumentator

Instrumentator().instrument(app)  # not .expose(): the service's GET /metrics shows them
""",
        "http_request_duration_highr_seconds",
    ),
    "starlette_exporter": (
        "starlette_exporter",
        """
from starlette_exporter import PrometheusMiddleware

app.add_middleware(PrometheusMiddleware)  # not handle_metrics: the service's GET /metrics shows them
""",
        "starlette_requests_total",
    ),
}


def available() -> tuple[list[str], list[str]]:
    """The variants whose package is importable here, and those whose package is not."""
    ok, missing = ["none"], []
    for name, (package, _, _) in VARIANTS.items():
        (ok if package is None or importlib.util.find_spec(package) else missing).append(name)
    return ok, missing


def write_variants(apps: Path, package: str, names: list[str]) -> dict[str, str]:
    """Write a module per variant into ``apps``; return each variant's ``module:app``."""
    targets = {"none": f"{package}.api:app"}
    for name in names:
        if name == "none":
            continue
        doc = f"The baked {package}.api:app with request metrics: {name} (bench/harness/request_metrics.py)."
        (apps / f"rm_{name}.py").write_text(HEADER.format(doc=doc, package=package) + VARIANTS[name][1])
        targets[name] = f"rm_{name}:app"
    return targets


def exposes(port: int, name: str) -> bool:
    """Whether the service's own GET /metrics shows the variant's request metric (``none``: shows none
    of them)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    if name == "none":
        return not any(metric in text for _, _, metric in VARIANTS.values())
    return VARIANTS[name][2] in text
