"""What every primary lock offers the election, whichever backend holds it.

The election (``election.py``) only talks to this interface, so the campaign, promotion, demotion and
health reporting are the same code for the file lock and the Redis lock.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol


class LockError(Exception):
    """The lock could not even be attempted (bad path, permissions, unreachable server).

    The message names the cause and the fix; the election logs it, stays standby and retries.
    A lock that is merely held by another worker is not an error.
    """


@dataclass(frozen=True)
class Holder:
    """Who holds the primary lock, as written by the holder for humans and the status command."""

    pid: int
    host: str
    since: str
    epoch: int
    active_at: str | None = None
    """When a lease holder starts singleton work, if that is still ahead (it is waiting out a lease
    that a previous holder may still believe in); None once it runs singleton work."""

    @classmethod
    def me(cls, epoch: int) -> Holder:
        """Describe this process as the new holder."""
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            epoch=epoch,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        text = f"pid={self.pid} host={self.host} since={self.since} epoch={self.epoch}"
        if self.active_at:
            text += f", taking over: singleton work starts at {self.active_at}"
        return text


STARTUP_JOB_PREFIX = "startup:"
"""Runs of jobs named ``startup:<task>`` (a start-up task's version) are kept for good: forgetting one
would run the task again, and make every worker not ready meanwhile. Other runs may be pruned after a
month."""

Claim = Literal["claimed", "done", "fenced"]
"""What a claim in the run ledger found: ours to do now; done already; or not ours, because this
worker is no longer the primary (or a newer primary has claimed it)."""


class RunLedger(Protocol):
    """Which runs of singleton work are done, shared by every primary of the lock scope.

    A run is one ``period`` of one ``job``: a report's "20261128T070000Z", a start-up task's
    version. Claims are fenced: only the current primary can claim, so a deposed primary, even one
    that does not know it yet, cannot run a period again. Done runs of start-up tasks (jobs named
    ``STARTUP_JOB_PREFIX`` + name) are never pruned.
    """

    async def claim(self, job: str, period: str) -> Claim:
        """May this primary do this run now? "claimed" if nobody did it yet, or a previous primary
        claimed it and died before finishing (then it is done again, which is why a report's
        Message-ID is derived from its period), or this primary claimed it before and could not
        finish; "done" if it is done; "fenced" if this worker is not the primary any more."""

    async def finish(self, job: str, period: str) -> None:
        """Record that the run is done: nobody will claim it again."""

    async def abandon(self, job: str, period: str) -> None:
        """Give a claim back after a failure, so that a later attempt may claim it again."""

    async def last_done(self, job: str) -> str | None:
        """The greatest period of ``job`` that is done (periods of one job sort by time), if any."""

    async def is_done(self, job: str, period: str) -> bool:
        """Whether the run is done (read by any worker: a standby asks whether a start-up task is)."""

    async def created_at(self) -> float:
        """When the ledger was created (Unix time): it knows nothing of the runs before. A ledger
        lost and created anew (deleted, or in a Redis that lost its data) is younger than its runs."""


class PrimaryLock(Protocol):
    """The primary lock of one lock scope (one lock file, or one Redis key).

    Every method that can fail for a reason other than "someone else holds it" raises LockError.
    """

    backend: str
    """Short name of the backend, reported by ``/health/worker``."""

    location: str
    """Where the lock lives, for messages: the lock file's path, or the Redis URL (no password) and key."""

    epoch: int
    """Fencing token of the current (or last) acquisition by this worker; 0 before the first one."""

    async def try_acquire(self) -> bool:
        """Take the lock if it is free right now; never waits for another holder."""

    async def acquire(self) -> None:
        """Wait until this worker holds the lock."""

    async def hold(self) -> None:
        """Keep the lock (renew or verify it) and return as soon as it is lost."""

    def is_held(self) -> bool:
        """Whether this worker still holds the lock by its own reckoning, without any I/O."""

    def takeover_delay(self) -> float:
        """Seconds to hold a newly won lock before starting singleton work, because a previous
        holder may still believe it holds the lock (Redis restarted and lost it); usually 0."""

    async def release(self) -> None:
        """Give the lock up if this worker holds it; never touches another worker's lock."""

    async def read_holder(self) -> Holder | None:
        """Who holds the lock now (any worker, or a command-line tool), or None if nobody does."""

    def run_ledger(self) -> RunLedger:
        """The run ledger of this lock scope, whose claims are valid only while this lock is held."""

    async def close(self) -> None:
        """Free the resources (connections, threads) of this lock object."""
