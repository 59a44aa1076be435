"""What every lease backend shares (Redis, PostgreSQL): the clock rules that keep a lease to one primary.

A lease lives in a store that all workers share and expires unless its holder renews it; beside it
the store keeps a *holder record* (who holds it, its epoch, until when its lease runs if it is not
renewed, from when it may run singleton work) that outlives the holder. A backend supplies the
store's operations (``_acquire_lease``, ``_renew_lease``, ``_release_lease``, ``_announcements``);
this class keeps the time:

* **The primary demotes itself before its lease can expire.** It counts its lease as lost once its
  last successful renewal is older than ttl minus a safety margin, measured on its own monotonic
  clock from *before* the renewal was sent, and no renewal may run past that deadline. A primary cut
  off from the store, or paused (SIGSTOP, a frozen VM) and then resumed, stops its singleton work
  before anyone else could take over.
* **The primary renews often**: every ttl/3, but at least every half second, so that when the store
  loses the lease (deleted, flushed, evicted, restarted empty, a session that ended) the primary
  notices within half a second, sooner than any new holder may start (next rule), unless it is cut
  off from the store.
* **A new holder waits out any lease a previous holder may still believe in.** The record says until
  when the previous lease ran, and from when its holder was allowed to start, in the store's own
  clock, so the new holder keeps the lease but starts no singleton work before then (a holder that
  dies or stops while it waits passes that wait on). Without any record it waits the longest lease
  it knows of: its own, or any longer one it has seen in a record while it was a standby. After a
  graceful release, or a lease that simply expired, there is nothing to wait for.
* **Standbys retry** every ``LOCK_RETRY_SECONDS`` and at once when a release is announced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass
from typing import Self

from pydantic import BaseModel, Field, model_validator

from ..metrics import count_renew_failure
from .base import Holder, LockError, RunLedger

logger = logging.getLogger(__name__)

MAX_LEASE_SECONDS = 300
"""The longest lease a holder may have (LOCK_TTL_SECONDS): no takeover wait is ever longer."""
MAX_RENEW_INTERVAL_SECONDS = 0.5
"""The primary renews at least this often, whatever its ttl (see the module's docstring)."""

WHY_WAIT = {
    "vanished": "the previous holder's lease vanished before it expired (deleted, evicted, lost by a "
    "restart, or its session ended), or that holder was itself still waiting out an earlier one",
    "inherited": "the previous holder released the lease while it was still waiting out an earlier one",
    "unknown": "there is no record of a previous holder (a new lock scope, or a store that lost its data)",
}


class LeaseSettings(BaseModel):
    """The settings every lease backend has (its ``BackendSettings`` inherits them)."""

    lock_ttl_seconds: float = Field(default=10.0, ge=1, le=MAX_LEASE_SECONDS)
    """Lifetime of the primary's lease: a primary cut off from the store steps down within it, and a
    crashed primary is replaced within it plus the retry."""
    lock_retry_seconds: float = Field(default=1.0, ge=0.05, le=60)
    """How often standbys retry; after a lock error the delay doubles up to 10 s."""

    @model_validator(mode="after")
    def _retry_within_the_lease(self) -> Self:
        if self.lock_retry_seconds > self.lock_ttl_seconds / 2:
            raise ValueError(
                f"LOCK_RETRY_SECONDS={self.lock_retry_seconds:g}: must be at most half of "
                f"LOCK_TTL_SECONDS ({self.lock_ttl_seconds:g}), so that a standby tries several times "
                "within one lease"
            )
        return self


def safety_margin(ttl: float) -> float:
    """How long before the lease expires the primary gives up: 2 s, or a third of a short ttl."""
    return min(2.0, ttl / 3)


def belief_window(ttl: float) -> float:
    """How long after its last successful renewal a holder with this ttl may still count itself primary."""
    return ttl - safety_margin(ttl)


@dataclass(frozen=True)
class Acquisition:
    """What the store answered to one attempt at the lease."""

    won: bool
    epoch: int = 0
    wait_seconds: float = 0.0
    """Won: how long to wait before singleton work (see the module's docstring)."""
    why: str = ""
    """Won: why it must wait (a key of ``WHY_WAIT``)."""
    holder_ttl: float | None = None
    """Lost: the lease length of the current holder, if the record tells."""


class LeaseLock(ABC):
    """A primary lock that is a lease in a shared store; subclasses supply the store's operations."""

    backend = "lease"
    location = "lease"
    check_store = "check that the lock backend is running and reachable"
    """The fix to suggest when the store cannot be reached."""

    def __init__(self, ttl: float, retry_seconds: float) -> None:
        self.ttl = ttl
        self.retry_seconds = retry_seconds
        self.renew_every = min(ttl / 3, MAX_RENEW_INTERVAL_SECONDS)
        self.epoch = 0
        self.token = ""  # of the lease we hold or last held; "" once released
        self.holder = Holder.me(0)  # the record of our lease (while we hold one)
        self._renewed_at: float | None = None  # monotonic time the last successful renewal was sent
        self._next_renewal = 0.0  # monotonic time of the next renewal
        self._takeover_at = 0.0  # monotonic time before which a newly won lease must not be used
        self._longest_ttl_seen = ttl  # the longest lease of any holder seen in this scope

    # -- what a backend supplies -------------------------------------------------------------------

    @abstractmethod
    async def _acquire_lease(self, token: str, holder: Holder, wait_without_record: float) -> Acquisition:
        """Take the lease for ``token`` if it is free, number the epoch and write the record, all at
        once; the wait follows the module's rules, capped at ``MAX_LEASE_SECONDS``. Raises
        ``LockError`` (leaving no lease behind) when the store fails."""

    @abstractmethod
    async def _renew_lease(self) -> bool:
        """Extend our lease and the record's expiry; False if the lease is surely not ours any more.
        ``LockError`` when the store cannot tell (then it is retried until the deadline)."""

    @abstractmethod
    async def _release_lease(self, token: str) -> None:
        """Delete the lease if it still holds ``token``, mark the record released, announce it."""

    @abstractmethod
    def _announcements(self) -> AbstractAsyncContextManager[asyncio.Event]:
        """Listen for release announcements: the event is set on each one (subscribed on entry,
        so that no release slips between the listening and the next attempt)."""

    @abstractmethod
    async def read_holder(self) -> Holder | None: ...

    @abstractmethod
    def run_ledger(self) -> RunLedger: ...

    @abstractmethod
    async def close(self) -> None: ...

    # -- the lock ---------------------------------------------------------------------------------

    async def try_acquire(self) -> bool:
        token = f"{os.getpid()}@{socket.gethostname()}#{uuid.uuid4().hex}"
        holder = Holder.me(0)
        sent_at = time.monotonic()
        result = await self._acquire_lease(token, holder, belief_window(self._longest_ttl_seen))
        if not result.won:
            if result.holder_ttl:  # a longer lease than ours must be waited out one day
                self._longest_ttl_seen = max(self._longest_ttl_seen, result.holder_ttl)
            return False
        received_at = time.monotonic()
        self.token, self.epoch, self._renewed_at = token, result.epoch, sent_at
        self._next_renewal = sent_at + self.renew_every
        self.holder = Holder(pid=holder.pid, host=holder.host, since=holder.since, epoch=result.epoch)
        if (task := asyncio.current_task()) is not None and task.cancelling():
            await self.release()  # cancelled while the lease was being taken: give it back
            raise asyncio.CancelledError
        self._takeover_at = received_at + result.wait_seconds
        if result.wait_seconds > 0:
            logger.info(
                "Won the primary lease (epoch %d), but %s: waiting %.1f s before starting singleton "
                "work, until that holder has surely stepped down",
                self.epoch,
                WHY_WAIT.get(result.why, result.why),
                result.wait_seconds,
            )
        return True

    def takeover_delay(self) -> float:
        return max(0.0, self._takeover_at - time.monotonic()) if self.is_held() else 0.0

    async def acquire(self) -> None:
        """Try now, then again on every release announcement or every ``retry_seconds``."""
        async with self._announcements() as released:
            while True:
                released.clear()
                if await self.try_acquire():
                    return
                with suppress(TimeoutError):
                    async with asyncio.timeout(self.retry_seconds):
                        await released.wait()

    async def hold(self) -> None:
        # The schedule lives on the instance: hold() is entered again after the takeover wait and
        # must carry on from the last renewal, not start a fresh period that could end past the
        # deadline. A failed renewal is retried sooner, a few times before the deadline, and no
        # renewal may run past the deadline (whatever timeouts the store's client has).
        while self._renewed_at is not None:
            deadline = self._renewed_at + belief_window(self.ttl)
            await asyncio.sleep(max(0.0, min(self._next_renewal, deadline) - time.monotonic()))
            if self._renewed_at is None:
                return  # released meanwhile (the worker shuts down): nothing to keep
            if not self.is_held():
                self._renewed_at = None
                raise LockError(
                    f"the primary lease ({self.location}) was not renewed for "
                    f"{belief_window(self.ttl):.1f} s (unreachable, or this process was paused), so this "
                    f"worker stepped down before the lease could expire; {self.check_store}"
                )
            attempt = time.monotonic()
            try:
                async with asyncio.timeout(max(0.01, deadline - attempt)):
                    renewed = await self._renew_lease()
            except (LockError, TimeoutError) as exc:
                count_renew_failure()
                logger.warning("Renewing the primary lease failed, retrying: %s", exc or "timed out")
                self._next_renewal = attempt + self.renew_every / 3
                continue
            if not renewed:
                self._renewed_at = None
                logger.warning("The primary lease (%s) is gone or held by another worker", self.location)
                return
            self._renewed_at, self._next_renewal = attempt, attempt + self.renew_every

    def is_held(self) -> bool:
        if self._renewed_at is None:
            return False
        return time.monotonic() - self._renewed_at < belief_window(self.ttl)

    async def release(self) -> None:
        if not self.token:
            return
        token, self.token, self._renewed_at = self.token, "", None
        await self._release_lease(token)
