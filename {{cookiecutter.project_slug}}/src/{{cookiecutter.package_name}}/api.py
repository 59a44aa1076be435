"""The FastAPI application: ``uvicorn {{ cookiecutter.package_name }}.api:app --workers 4``.

FastAPI runs the lifespan in every worker process. Here the lifespan starts this worker's election:
the one worker that wins the primary lock runs the singleton services (``services.py``); every
worker serves every route.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from .config import ConfigError, Settings, load_settings
from .coordination import Election, SingletonService, make_lock
from .notifications.alerts import start_alert_digests
from .notifications.reports import ServiceStats
from .services import singleton_services


def create_app(settings: Settings | None = None, services: list[SingletonService] | None = None) -> FastAPI:
    """Build the application; tests may pass their own settings and singleton services."""
    settings = settings or load_settings()
    services = singleton_services(settings) if services is None else services
    configure_logging(settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Runs in each worker after the server has started it (never at import time, where
        # gunicorn --preload would make every forked worker share one lock).
        election = Election(
            make_lock(settings),
            services,
            retry_seconds=settings.lock_retry_seconds,
        )
        app.state.election = election
        alerts = start_alert_digests(settings, lambda: "primary" if election.is_primary else "standby")
        await election.start()  # never raises: a lock problem leaves this worker standby
        retire_on_shutdown_signal(election)
        try:
            yield
        finally:
            await election.stop()  # stops the singleton services, then releases the lock
            if alerts:
                await alerts.stop()

    app = FastAPI(
        # The project's display name (double quotes made single, backslashes dropped).
        {% set title = cookiecutter.project_name | replace('\\', '') | replace('"', "'") | tojson %}title={{ title if title | length <= 90 else cookiecutter.project_slug | tojson }},
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        ServiceStats.requests += 1  # for the example report
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the worker answers."""
        return {"status": "ok"}

    @app.get("/health/worker")
    async def worker_health(request: Request) -> dict[str, Any]:
        """The serving worker's role in the election, and who holds the primary lock."""
        election: Election = request.app.state.election
        return await election.status()

    return app


def retire_on_shutdown_signal(election: Election) -> None:
    """Stop campaigning as soon as the server is told to stop this worker (SIGTERM or SIGINT).

    uvicorn and gunicorn's Uvicorn worker catch these signals, then finish in-flight requests, then
    run the lifespan's shutdown. We add a step in front of their handler, so that a worker on its way
    out no longer competes for the lock: it passes to a worker that stays.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (not so under a test client)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        server_handler = signal.getsignal(signum)
        if not callable(server_handler):
            continue  # no server handler to chain (e.g. under a test client): nothing to do

        def handler(signum: int, frame: Any, server_handler: Any = server_handler) -> None:
            loop.call_soon_threadsafe(election.retire)
            server_handler(signum, frame)

        signal.signal(signum, handler)


def configure_logging(level: str) -> None:
    """Send this package's log records to stderr, beside the server's own lines."""
    package_logger = logging.getLogger(__package__)
    package_logger.setLevel(level)
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
        package_logger.addHandler(handler)
        package_logger.propagate = False


WORKER_CANNOT_START = 3
"""Exit status that uvicorn and gunicorn both read as "this worker can never start": they stop the
whole server instead of restarting the worker forever."""

try:
    app = create_app()
except ConfigError as exc:
    print(f"ERROR: {exc}", file=sys.stderr)
    sys.exit(WORKER_CANNOT_START)
