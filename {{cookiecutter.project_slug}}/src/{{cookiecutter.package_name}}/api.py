"""The FastAPI application, served by the launcher (``python -m <package>``) or by uvicorn directly.

FastAPI runs the lifespan in every worker process. Here the lifespan runs this worker's part of the
election (``worker.py``): the one worker that wins the primary lock runs the singleton jobs declared
in ``jobs.py``; every worker serves every route. Nothing here runs per request.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from . import jobs  # noqa: F401  (declares the service's jobs)
from .config import ConfigError, Settings, load_settings
from .coordination import Election, LockError, SingletonService, declared_jobs
from .logs import configure_logging
from .metrics import exposition
from .worker import run_worker


def create_app(settings: Settings | None = None, extra_services: Sequence[SingletonService] = ()) -> FastAPI:
    """Build the application; tests may pass their own settings and more singleton services."""
    settings = settings or load_settings()
    singleton_jobs = declared_jobs(settings)
    configure_logging(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with run_worker(settings, [singleton_jobs.run_on_primary, *extra_services]) as election:
            app.state.election = election
            app.state.ledger = election.lock.run_ledger()  # read by every worker: readiness, job status
            yield

    app = FastAPI(
        # The project's display name (double quotes made single, backslashes dropped).
        {% set title = cookiecutter.project_name | replace('\\', '') | replace('"', "'") | tojson %}title={{ title if title | length <= 90 else cookiecutter.project_slug | tojson }},
        lifespan=lifespan,
        # "/health/ready/" must not answer 307 without checking anything (Kubernetes counts any 3xx
        # as success): a path with a stray slash is 404, which a probe reports.
        redirect_slashes=False,
    )

    @app.api_route("/health", methods=["GET", "HEAD"])  # some load balancers probe with HEAD
    async def health() -> dict[str, str]:
        """Liveness: the worker answers."""
        return {"status": "ok"}

    @app.api_route("/health/ready", methods=["GET", "HEAD"])
    async def ready(request: Request, response: Response) -> dict[str, Any]:
        """Readiness: 200 once every start-up task of this version is done (whichever worker ran
        it: the run ledger is shared), else 503 with what is pending and which of it has failed."""
        answer: dict[str, Any] = {"pid": os.getpid()}
        try:
            pending = await singleton_jobs.pending(request.app.state.ledger)
            failing = await singleton_jobs.failing(request.app.state.ledger) if pending else {}
        except LockError as exc:
            response.status_code = 503
            return {**answer, "status": "unknown", "error": str(exc)}
        if pending:
            response.status_code = 503
            return {**answer, "status": "starting", "pending": pending, "failing": failing}
        return {**answer, "status": "ready", "pending": []}

    @app.api_route("/health/worker", methods=["GET", "HEAD"])
    async def worker_health(request: Request) -> dict[str, Any]:
        """The serving worker's role in the election, who holds the primary lock, and the jobs."""
        election: Election = request.app.state.election
        status = await election.status()
        try:
            status["jobs"] = await singleton_jobs.describe(request.app.state.ledger)
        except LockError as exc:
            status["jobs"], status["jobs_error"] = None, str(exc)
        return status

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus metrics of every worker of this server, whichever worker answers."""
        if (scrape := exposition()) is None:  # this worker could not write its metrics (logged)
            return Response("metrics unavailable on this worker\n", status_code=503)
        body, content_type = scrape
        return Response(body, media_type=content_type)

    return app


WORKER_CANNOT_START = 3
"""Exit status that gunicorn reads as "this worker can never start": it stops the whole server
instead of restarting the worker forever. (uvicorn's own supervisor stops too, but exits 0: the
launcher, ``python -m <package>``, checks the settings before any worker starts and exits 3.)"""

try:
    app = create_app()
except ConfigError as exc:
    print(f"ERROR: {exc}", file=sys.stderr)
    sys.exit(WORKER_CANNOT_START)
