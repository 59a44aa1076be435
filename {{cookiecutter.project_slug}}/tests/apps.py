"""Variants of the service for tests that need to slow down or watch the primary."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from {{ cookiecutter.package_name }}.api import create_app
from {{ cookiecutter.package_name }}.config import load_settings
from {{ cookiecutter.package_name }}.coordination import Election, Run, StartupRun
from {{ cookiecutter.package_name }}.coordination.jobs import scheduled, startup_task

logger = logging.getLogger("{{ cookiecutter.package_name }}.tests")


def slow_exit_app() -> FastAPI:
    """The service, but every worker lingers ``SLOW_EXIT_SECONDS`` in shutdown before its election stops.

    That is a primary still finishing long in-flight requests: it holds the lock while the server's
    new workers are already up and campaigning.
    """
    app = create_app()
    service_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_lifespan(app):
            yield
            await asyncio.sleep(float(os.environ.get("SLOW_EXIT_SECONDS", "3")))

    app.router.lifespan_context = lifespan
    return app


async def tick(election: Election) -> None:
    """A singleton that does observable work: one log line every 50 ms, while it is primary."""
    while True:
        await asyncio.sleep(0.05)
        if election.is_primary:  # the check every singleton makes right before a side effect
            logger.info("Singleton tick: pid=%d", os.getpid())


def ticking_app() -> FastAPI:
    """The service with the ``tick`` singleton registered beside the jobs."""
    return create_app(load_settings(), [tick])


def noisy_app() -> FastAPI:
    """The service with ``GET /errors?count=N``, which logs N error records: the same three messages,
    or with ``distinct=true`` a different message each (``first`` numbers them on)."""
    app = create_app()

    @app.get("/errors")
    async def errors(count: int = 1, distinct: bool = False, first: int = 0) -> dict[str, int]:
        for number in range(first, first + count):
            logger.error("Simulated failure number %d", number if distinct else number % 3)
        return {"logged": count, "pid": os.getpid()}

    @app.get("/leak")
    async def leak() -> dict[str, str]:
        """Careless code that logs every secret of the settings, in a message and in an exception."""
        secrets = " ".join(load_settings().secret_values())
        logger.error("Careless log line: %s", secrets)
        try:
            raise RuntimeError(f"careless exception: {secrets}")
        except RuntimeError:
            logger.exception("Careless traceback")
        logging.getLogger("some.library").error("A library's careless line: %s", secrets)
        return {"status": "logged"}

    return app


def jobs_app() -> FastAPI:
    """The service with a job and a start-up task of the tests, shaped by the environment.

    ``JOB_SCHEDULE`` (a cron expression; no job without it), ``JOB_CATCH_UP`` (its policy) and
    ``JOB_SECONDS`` (how long each run takes); ``TASK_VERSION`` (no task without it) and
    ``TASK_GATE`` (a path: the task finishes once that file exists). Each run of either appends
    ``start|end <key> <pid> <unix time>`` to ``RUNS_FILE``. Declared when the factory runs, once in
    each worker process, exactly as ``jobs.py`` declares the service's own.
    """
    env = os.environ
    if "JOB_SCHEDULE" in env:

        @scheduled(env["JOB_SCHEDULE"], catch_up=env.get("JOB_CATCH_UP", "all"))  # type: ignore[arg-type]
        async def counted(run: Run) -> None:
            note("start", run.key)
            await asyncio.sleep(float(env.get("JOB_SECONDS", "0")))
            note("end", run.key)

    if "TASK_VERSION" in env:

        @startup_task(version=env["TASK_VERSION"])
        async def gated(run: StartupRun) -> None:
            note("start", run.key)
            while not Path(env["TASK_GATE"]).exists():
                await asyncio.sleep(0.05)
            note("end", run.key)

    return create_app()


def migrations_app() -> FastAPI:
    """The service with its Alembic revisions taken from ``MIGRATIONS_DIRECTORY`` (PostgreSQL backend:
    a copy of ``migrations/`` with a revision of the test's own, such as a broken one)."""
    # (imported by name: only the PostgreSQL backend has this module)
    database: Any = importlib.import_module("{{ cookiecutter.package_name }}.database")
    database.MIGRATIONS = Path(os.environ["MIGRATIONS_DIRECTORY"])
    return create_app()


def note(event: str, key: str) -> None:
    """Append one line to RUNS_FILE (one small write in append mode: lines of workers never mix)."""
    with open(os.environ["RUNS_FILE"], "a") as runs:
        runs.write(f"{event} {key} {os.getpid()} {time.time():.6f}\n")
