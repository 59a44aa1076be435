"""Primary-worker election: exactly one worker runs the singleton services, every worker serves HTTP.

Start with ``election.py`` (the loop every worker runs), then the lock it campaigns for.
"""

from __future__ import annotations

import logging

from ..config import Settings, load_settings
from .base import Holder, LockError, PrimaryLock
from .election import Election, SingletonService, hold_through_takeover
{%- if cookiecutter.lock_backend == "file" %}
from .file_lock import FileLock, demo_scope
{%- elif cookiecutter.lock_backend == "redis" %}
from .redis_lock import RedisLock, demo_scope
{%- endif %}

__all__ = [
    "Election",
    "Holder",
    "LockError",
    "PrimaryLock",
    "SingletonService",
    "demo_scope",
    "is_primary_worker",
    "make_lock",
]

logger = logging.getLogger(__name__)


def make_lock(settings: Settings) -> PrimaryLock:
    """The primary lock chosen when this project was generated."""
{%- if cookiecutter.lock_backend == "file" %}
    return FileLock(settings.lock_path)
{%- elif cookiecutter.lock_backend == "redis" %}
    return RedisLock(
        settings.redis_url,
        settings.lock_key_prefix,
        ttl=settings.lock_ttl_seconds,
        retry_seconds=settings.lock_retry_seconds,
    )
{%- endif %}


async def is_primary_worker(settings: Settings | None = None) -> tuple[bool, PrimaryLock | None]:
    """One attempt, right now, at the primary lock (the original guide's API).

    Returns ``(True, lock)`` when this process now holds the lock (call ``await lock.release()`` when
    done) and ``(False, None)`` otherwise. Unlike the election it never retries, so a process that
    loses stays secondary; the service itself uses ``Election``. When the lock cannot even be
    attempted the answer is ``False``: a broken lock must never make everybody primary.
    """
    lock = make_lock(settings or load_settings())
    try:
        # Renewed through the takeover wait (see PrimaryLock.takeover_delay; usually none), so that
        # the answer is still true when it is given.
        if await lock.try_acquire() and await hold_through_takeover(lock):
            return True, lock
    except LockError as exc:
        logger.error("Primary lock unavailable, answering not primary: %s", exc)
    await lock.close()
    return False, None
