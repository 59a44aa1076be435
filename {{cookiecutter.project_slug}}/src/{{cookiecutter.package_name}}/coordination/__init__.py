"""Primary-worker election: exactly one worker runs the singleton jobs, every worker serves HTTP.

Start with ``election.py`` (the loop every worker runs), then the lock it campaigns for (the module
that ``backend.py`` names), then ``jobs.py`` (what the primary runs: ``@scheduled`` jobs and
``@startup_task`` tasks, declared in the service's own ``jobs.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .backend import make_lock
from .base import Holder, LockError, PrimaryLock
from .election import Election, SingletonService, hold_through_takeover
from .jobs import Jobs, Run, Schedule, StartupRun, declared_jobs, scheduled, startup_task

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "Election",
    "Holder",
    "Jobs",
    "LockError",
    "PrimaryLock",
    "Run",
    "Schedule",
    "SingletonService",
    "StartupRun",
    "declared_jobs",
    "is_primary_worker",
    "make_lock",
    "scheduled",
    "startup_task",
]

logger = logging.getLogger(__name__)


async def is_primary_worker(settings: Settings | None = None) -> tuple[bool, PrimaryLock | None]:
    """One attempt, right now, at the primary lock (the original guide's API).

    Returns ``(True, lock)`` when this process now holds the lock (call ``await lock.release()`` when
    done) and ``(False, None)`` otherwise. Unlike the election it never retries, so a process that
    loses stays secondary; the service itself uses ``Election``. When the lock cannot even be
    attempted the answer is ``False``: a broken lock must never make everybody primary.
    """
    if settings is None:
        from ..config import load_settings  # here, not above: config.py imports this package

        settings = load_settings()
    lock = make_lock(settings)
    try:
        # Renewed through the takeover wait (see PrimaryLock.takeover_delay; usually none), so that
        # the answer is still true when it is given.
        if await lock.try_acquire() and await hold_through_takeover(lock):
            return True, lock
    except LockError as exc:
        logger.error("Primary lock unavailable, answering not primary: %s", exc)
    await lock.close()
    return False, None
