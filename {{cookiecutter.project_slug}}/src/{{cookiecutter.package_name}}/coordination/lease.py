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
* **A holder that provably died on this host is not waited for.** The lease's token names the
  process that holds it (``process.ProcessId``: boot, pid and time namespaces, pid, start time). A
  standby that sees pids as the holder does checks at each attempt whether that process is gone
  (``process.examine``), and between attempts waits on a pidfd that wakes it when the holder exits.
  A process that is gone cannot act, so the standby ends that lease at once, only if it still holds
  that token (``_end_dead_lease``), and campaigns as usual: a new epoch, no wait for the dead
  holder's lease (a wait the dead holder itself still had to do is passed on). Anything short of
  proof (another host or container, a paused holder, an unreadable ``/proc``) waits out the lease.
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
from .process import Examination, ProcessId, examine

logger = logging.getLogger(__name__)

MAX_LEASE_SECONDS = 300
"""The longest lease a holder may have (LOCK_TTL_SECONDS): no takeover wait is ever longer."""
MAX_RENEW_INTERVAL_SECONDS = 0.5
"""The primary renews at least this often, whatever its ttl (see the module's docstring)."""
DEAD_HOLDER_RETRY_SECONDS = 0.01
"""How often a standby retries while a holder that provably died still seems to hold the lock (a
PostgreSQL session ends a moment after its process), for at most ``DEAD_HOLDER_GRACE_SECONDS``."""
DEAD_HOLDER_GRACE_SECONDS = 1.0
"""After that, a dead holder's lock that is still held (a session that lives on) is retried as usual."""

WHY_WAIT = {
    "vanished": "the previous holder's lease vanished before it expired (deleted, evicted, lost by a "
    "restart, or its session ended), or that holder was itself still waiting out an earlier one",
    "inherited": "the previous holder released the lease (or provably died) while it was still waiting "
    "out an earlier one",
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


def new_token() -> str:
    """A token unique to one acquisition: ``pid@host#random``, then the process that holds it
    (``ProcessId``), so that a standby on the same host can prove that holder gone."""
    return f"{os.getpid()}@{socket.gethostname()}#{uuid.uuid4().hex} {ProcessId.me().encode()}"


def examine_holder(token: str) -> Examination:
    """Whether the process that holds the lease under ``token`` provably no longer runs (see
    ``process.examine``); a token of an older version names none, and proves nothing."""
    process = ProcessId.decode(token.rpartition(" ")[2]) if " " in token else None
    return examine(process) if process is not None else Examination(gone=False)


def holder_is_gone(token: str) -> bool:
    """Whether the process that holds the lease under ``token`` provably no longer runs."""
    found = examine_holder(token)
    if found.exit_fd is not None:
        os.close(found.exit_fd)
    return found.gone


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
    holder_token: str = ""
    """Lost: the token of the current holder, if the store tells."""


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
        self._holder_exit_fd: int | None = None  # a pidfd of the holder last seen, to wake on its exit
        self._holder_gone = False  # the last attempt found the holder provably dead
        self._dead_token, self._dead_seen_at = "", 0.0  # the last holder found dead, and when first

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
    async def _end_dead_lease(self, token: str) -> bool:
        """End the lease held under ``token``, whose holder provably died, so that the next holder
        need not wait for it: only if it is still held under that token, in one atomic step. True
        if this call ended it."""

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
        self._forget_holder_exit()
        for _ in range(2):  # once more, at once, right after ending a dead holder's lease
            if await self._attempt():
                return True
            if not self._holder_gone:
                break
        return False

    async def _attempt(self) -> bool:
        token = new_token()
        holder = Holder.me(0)
        sent_at = time.monotonic()
        result = await self._acquire_lease(token, holder, belief_window(self._longest_ttl_seen))
        if not result.won:
            if result.holder_ttl:  # a longer lease than ours must be waited out one day
                self._longest_ttl_seen = max(self._longest_ttl_seen, result.holder_ttl)
            self._holder_gone = await self._look_at_holder(result.holder_token)
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

    async def _look_at_holder(self, token: str) -> bool:
        """After a lost attempt: if the holder provably died on this host, end its lease and say
        so; else keep a pidfd of it (if it runs here) to wake up when it exits."""
        found = examine_holder(token)
        if not found.gone:
            self._holder_exit_fd = found.exit_fd
            return False
        if token != self._dead_token:
            self._dead_token, self._dead_seen_at = token, time.monotonic()
        if await self._end_dead_lease(token):
            logger.info(
                "The primary (%s) died on this host: its lease was ended at once instead of waiting "
                "for it to expire",
                token.partition("#")[0],
            )
        return True

    def _forget_holder_exit(self) -> None:
        fd, self._holder_exit_fd = self._holder_exit_fd, None
        if fd is not None:
            os.close(fd)

    def _next_attempt_in(self) -> float:
        """The retry interval; much sooner while a holder that provably died still holds the lock."""
        if self._holder_gone and time.monotonic() - self._dead_seen_at < DEAD_HOLDER_GRACE_SECONDS:
            return DEAD_HOLDER_RETRY_SECONDS
        return self.retry_seconds

    def takeover_delay(self) -> float:
        return max(0.0, self._takeover_at - time.monotonic()) if self.is_held() else 0.0

    async def acquire(self) -> None:
        """Try now, then again on every release announcement, when the holder exits (if it runs on
        this host), or every ``retry_seconds``."""
        loop = asyncio.get_running_loop()
        async with self._announcements() as wake_up:
            while True:
                wake_up.clear()
                if await self.try_acquire():
                    return
                exit_fd = self._holder_exit_fd
                if exit_fd is not None:
                    loop.add_reader(exit_fd, wake_up.set)  # readable once the holder has exited
                try:
                    with suppress(TimeoutError):
                        async with asyncio.timeout(self._next_attempt_in()):
                            await wake_up.wait()
                finally:
                    if exit_fd is not None:
                        loop.remove_reader(exit_fd)
                    self._forget_holder_exit()

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
        self._forget_holder_exit()
        if not self.token:
            return
        token, self.token, self._renewed_at = self.token, "", None
        await self._release_lease(token)
