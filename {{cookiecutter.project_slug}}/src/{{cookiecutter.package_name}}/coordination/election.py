"""The election: one task per worker that keeps campaigning for the primary lock.

Every worker serves HTTP. Exactly one of them, the primary, also runs the singleton services (the
jobs and start-up tasks of ``jobs.py``). The election in each worker goes round this loop for as long
as the worker lives::

    standby --(lock acquired)--> primary --(lock lost, or cannot be verified)--> standby --> ...
                                 starts the singleton services    stops them first

Standbys never give up: when the primary dies, one of them takes over at once, without waiting for
the server to restart anything. When the lock cannot even be attempted (bad path, Redis down), the
worker stays standby, keeps serving, logs an ERROR with the fix and retries with a growing delay:
it never assumes it is primary because locking failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from ..metrics import count_lock_error, count_transition, set_primary
from .base import Holder, LockError, PrimaryLock

logger = logging.getLogger(__name__)

SingletonService = Callable[["Election"], Awaitable[None]]
"""An async function run on the primary only. A one-off task returns; a long-running one runs until
it is cancelled, which happens when the worker is demoted or shuts down."""

MAX_RETRY_SECONDS = 10.0
"""Upper bound of the back-off between attempts while the lock backend keeps failing."""
SERVICE_STOP_SECONDS = 5.0
"""How long a cancelled singleton service may take to finish before the lock is released anyway."""
ERROR_REPEAT_SECONDS = 60.0
"""A lock error that persists is logged again this often, so it stays visible in the logs."""
HOLDER_CACHE_SECONDS = 0.5
"""How long ``status`` reuses the holder it read: a flood of ``/health/worker`` requests costs the
lock backend at most one read per this interval and worker, never a connection per request."""


class Election:
    """Campaign for the primary lock and run the singleton services while holding it."""

    def __init__(
        self,
        lock: PrimaryLock,
        services: Sequence[SingletonService] = (),
        *,
        retry_seconds: float = 1.0,
    ) -> None:
        self.lock = lock
        self.services = list(services)
        self.retry_seconds = retry_seconds
        self.primary_since: datetime | None = None
        self.lock_error: str | None = None
        self._service_tasks: list[asyncio.Task[None]] = []
        self._campaign_task: asyncio.Task[None] | None = None
        self._failures = 0
        self._error_logged_at = 0.0
        self._retiring = False
        self._holder: Holder | None = None
        self._holder_read_at = -HOLDER_CACHE_SECONDS
        self._holder_lookup = asyncio.Lock()

    @property
    def is_primary(self) -> bool:
        """Whether this worker may run singleton work right now.

        Check it right before a side effect that must happen once: it turns False as soon as the
        lock is lost, or (Redis) as soon as the lease could have expired, even before the election
        task had a chance to demote the worker.
        """
        return self.primary_since is not None and self.lock.is_held()

    async def start(self) -> None:
        """Make one immediate attempt (so the start-up log line tells the role), then campaign on."""
        won = False
        try:
            won = await self.lock.try_acquire()
        except LockError as exc:
            self._lock_failed(exc)
        except Exception:
            logger.exception("Unexpected error in the first attempt at the primary lock")
        won = won and self.lock.takeover_delay() == 0  # else the campaign promotes after the delay
        logger.info("Worker startup: pid=%d, primary=%s", os.getpid(), won)
        set_primary(False)  # a series for every worker, standbys included
        if won:
            self._promote(announce=False)
        self._campaign_task = asyncio.create_task(self._campaign(), name="primary-election")

    def retire(self) -> None:
        """The server is stopping this worker: stop campaigning, but keep the lock if held until ``stop``.

        Without this, a server that stops all its workers would pass the lock from one exiting
        worker to the next. A primary keeps its lock while it finishes its in-flight requests.
        """
        self._retiring = True
        if self.primary_since is None and self._campaign_task is not None:
            self._campaign_task.cancel()

    async def stop(self) -> None:
        """Stop campaigning, stop the singleton services, then release the lock (in that order)."""
        self._retiring = True
        if self._campaign_task is not None:
            self._campaign_task.cancel()
            # Bounded: shutting down must never hang on a lock backend (the release below ends
            # any renewal loop that would still be running).
            done, _ = await asyncio.wait({self._campaign_task}, timeout=SERVICE_STOP_SECONDS)
            if not done:
                logger.error("The election task did not stop in time; releasing the lock anyway")
            elif not self._campaign_task.cancelled() and self._campaign_task.exception():
                logger.error("The election task failed", exc_info=self._campaign_task.exception())
        if self.primary_since is not None:
            await self._demote()
        await self.lock.close()

    async def status(self) -> dict[str, Any]:
        """This worker's view of the election, as served by ``GET /health/worker``."""
        holder = await self._current_holder()
        primary = self.is_primary
        return {
            "pid": os.getpid(),
            "role": "primary" if primary else "standby",
            "backend": self.lock.backend,
            "primary_since": self.primary_since.isoformat() if self.primary_since else None,
            "epoch": self.lock.epoch if primary else (holder.epoch if holder else None),
            "holder": holder.as_dict() if holder else None,
            "lock_error": self.lock_error,
            # Seconds until this worker, which holds the lock, may start singleton work (see
            # PrimaryLock.takeover_delay); null unless it is waiting out a previous holder's lease.
            "takeover_wait_seconds": round(wait, 1) if (wait := self.lock.takeover_delay()) else None,
        }

    async def _current_holder(self) -> Holder | None:
        """Who holds the lock, read at most once per ``HOLDER_CACHE_SECONDS`` (one read at a time)."""
        async with self._holder_lookup:
            if time.monotonic() - self._holder_read_at >= HOLDER_CACHE_SECONDS:
                try:
                    self._holder = await self.lock.read_holder()
                except LockError:
                    self._holder = None
                self._holder_read_at = time.monotonic()
            return self._holder

    # -- the loop --------------------------------------------------------------------------------

    async def _campaign(self) -> None:
        while not (self._retiring and self.primary_since is None):
            if self._failures:  # the last attempt (maybe the one in start()) failed: back off first
                await asyncio.sleep(self._retry_delay())
            try:
                if self.primary_since is None:
                    if not self.lock.is_held() and not await self.lock.try_acquire():
                        self._lock_usable()  # reachable, merely held by someone else: wait for it
                        await self.lock.acquire()
                    self._lock_usable()
                    if not await self._wait_for_takeover():
                        continue  # lost the lock while waiting
                    if self._retiring:  # told to stop while it was waiting: not worth a promotion
                        await self.lock.release()
                        return
                    self._promote(announce=True)
                await self.lock.hold()  # returns once the lock is lost
            except LockError as exc:
                self._lock_failed(exc)
            except Exception:
                self._failures += 1
                logger.exception("Unexpected error in the primary election; retrying")
            if self.primary_since is not None:
                await self._demote()

    async def _wait_for_takeover(self) -> bool:
        return await hold_through_takeover(self.lock)

    def _promote(self, *, announce: bool) -> None:
        self.primary_since = datetime.now(UTC)
        set_primary(True)
        count_transition()
        if announce:
            logger.info("Worker role change: pid=%d, primary=True", os.getpid())
        for service in self.services:
            name = getattr(service, "__name__", repr(service))
            self._service_tasks.append(asyncio.create_task(self._run_service(service), name=name))

    async def _demote(self) -> None:
        self.primary_since = None  # is_primary turns False before anything else happens
        set_primary(False)
        count_transition()
        tasks, self._service_tasks = self._service_tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=SERVICE_STOP_SECONDS)
            for task in still_running:
                logger.error("Singleton service %s ignored cancellation", task.get_name())
        # Logged before the release, so that in a shared log the successor's promotion comes after.
        logger.info("Worker role change: pid=%d, primary=False", os.getpid())
        try:
            await self.lock.release()
        except Exception:
            logger.exception("Could not release the primary lock (it expires or dies with us)")

    async def _run_service(self, service: SingletonService) -> None:
        try:
            await service(self)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Singleton service %s failed", getattr(service, "__name__", service))

    # -- errors ------------------------------------------------------------------------------

    def _lock_failed(self, exc: LockError) -> None:
        self._failures += 1
        count_lock_error()
        message = str(exc)
        now = time.monotonic()
        if message != self.lock_error or now - self._error_logged_at >= ERROR_REPEAT_SECONDS:
            logger.error("Primary lock unavailable, staying standby and retrying: %s", message)
            self._error_logged_at = now
        self.lock_error = message

    def _lock_usable(self) -> None:
        if self.lock_error is not None:
            logger.info("Primary lock is usable again")
        self.lock_error = None
        self._failures = 0

    def _retry_delay(self) -> float:
        return min(self.retry_seconds * 2.0 ** min(self._failures - 1, 10), MAX_RETRY_SECONDS)


async def hold_through_takeover(lock: PrimaryLock) -> bool:
    """Hold (renew) a newly won lock for its takeover delay; False if it was lost meanwhile."""
    delay = lock.takeover_delay()  # the lock logs why it waits
    if delay > 0:
        with suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await lock.hold()  # returns early only if the lock is lost
    return lock.is_held()
