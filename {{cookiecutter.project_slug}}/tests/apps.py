"""Variants of the service for tests that need to slow down or watch the primary."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from {{ cookiecutter.package_name }}.api import create_app
from {{ cookiecutter.package_name }}.config import load_settings
from {{ cookiecutter.package_name }}.coordination import Election
from {{ cookiecutter.package_name }}.services import singleton_services

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
    """The service with the ``tick`` singleton registered beside the others."""
    settings = load_settings()
    return create_app(settings, [*singleton_services(settings), tick])


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
