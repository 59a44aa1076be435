"""Singleton services: work that must run on exactly one worker at a time.

The election starts every service that ``singleton_services`` lists when this worker becomes the
primary, and cancels them when it stops being primary or shuts down. A service is an async function
that takes the ``Election``: a one-off task (a data migration) simply returns, a long-running one (the
report scheduler) runs until it is cancelled. To add one, write the function and add it to the list.

A primary can lose the lock (a crash elsewhere is not the only way: a paused process, a network
split, a lock file deleted by hand). Check ``election.is_primary`` right before a side effect that
must happen only once, such as committing a migration or sending a mail.
"""

from __future__ import annotations

import asyncio
import logging
import os

from .config import Settings
from .coordination import Election, SingletonService
from .notifications.reports import report_scheduler

logger = logging.getLogger(__name__)


async def run_startup_migration(election: Election) -> None:
    """Stand-in for a one-off start-up job, such as a data migration, that must not run twice at once.

    It runs each time a worker becomes primary, so write it to be idempotent: a migration that
    finds its work done must do nothing.
    """
    await asyncio.sleep(0)  # replace with the real work, e.g. `await migrate(database)`
    if election.is_primary:
        logger.info(
            "Startup task done: migration ran on the primary (pid=%d, epoch=%d)",
            os.getpid(),
            election.lock.epoch,
        )


def singleton_services(settings: Settings) -> list[SingletonService]:
    """Everything that must run on exactly one worker at a time."""
    services: list[SingletonService] = [run_startup_migration]
    if settings.report_to:
        services.append(report_scheduler(settings))
    return services
