"""The primary lock as a lease in Redis, shared by every worker of every container or host.

Keys, all under ``LOCK_KEY_PREFIX`` (``<prefix>`` below):

* ``<prefix>:primary``, the lease: a token unique to the holder (pid, host, random part, and the
  process for the crash proof of ``lease.py``), set with ``SET NX PX`` and renewed while the holder
  lives.
* ``<prefix>:holder``, the holder record (see ``lease.py``): who holds the lease, its epoch, its
  lease length, until when its lease runs if not renewed, from when it may run singleton work.
* ``<prefix>:epoch``, the number of the latest acquisition: the fencing token.
* ``<prefix>:run:<job>:<period>``, the run ledger; ``<prefix>:released``, the release channel.

Each step is one small Lua script, so that it is atomic: taking the lease, numbering the epoch and
writing the record happen together; a renewal extends the lease and moves the record's expiry
together; a release deletes the lease only if it still holds our token, marks the record released
and tells the standbys (``PUBLISH``); the same script ends the lease of a holder that provably
died on this host, under that holder's token. redis-py's ``Lock`` does the first half of each of these, but
cannot keep a record in step with the lease, which the takeover rule needs. The scripts repair what
they find broken (a key of the wrong type, an epoch that is no number, a lease without an expiry)
instead of failing on it for ever, and say so. The rules of time are in ``lease.py``.

This module is everything the Redis backend owns: its settings, its lock, its run ledger, and the
private scope of the demo.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..redaction import mask_url, url_secrets
from .base import STARTUP_JOB_PREFIX, Claim, Holder, LockError
from .lease import MAX_LEASE_SECONDS, Acquisition, LeaseLock, LeaseSettings

if TYPE_CHECKING:
    from ..config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class BackendSettings(LeaseSettings):
    """The Redis backend's settings (``config.Settings`` inherits them)."""

    redis_url: str = "redis://localhost:6379/0"
    """The Redis shared by every worker of every instance; may carry a password; rediss:// for TLS."""
    lock_key_prefix: str = Field(default={{ cookiecutter.project_slug | tojson }}, min_length=1)
    """Prefix of the service's Redis keys, so that several services can share one Redis."""

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        parts = urlsplit(url)
        try:
            valid = parts.scheme == "unix" or (parts.scheme in ("redis", "rediss") and parts.hostname)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
            parse_url(url)  # what redis-py will make of it, query parameters included
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(
                "must be a redis://, rediss:// or unix:// URL that redis-py accepts, "
                "e.g. redis://:password@redis:6379/0"
            )
        return url

    def backend_secrets(self) -> list[str]:
        """The secrets of these settings, in each form they may appear in (for log redaction)."""
        return url_secrets(self.redis_url)


SECRET_SETTINGS = {"REDIS_URL"}
"""Settings of this backend whose value may hold a password: never repeated in an error message."""


def make_lock(settings: BackendSettings) -> RedisLock:
    return RedisLock(
        settings.redis_url,
        settings.lock_key_prefix,
        ttl=settings.lock_ttl_seconds,
        retry_seconds=settings.lock_retry_seconds,
    )


# Shared by the scripts: the time in Redis's clock (ms), and a holder record that can be read (a key
# of another type, written by hand, counts as no record and is replaced).
PRELUDE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function record_field(key, field)
  if redis.call('TYPE', key).ok ~= 'hash' then return nil end
  return redis.call('HGET', key, field)
end
"""

ACQUIRE = (
    PRELUDE
    + """
-- KEYS: lease, epoch, holder.
-- ARGV: token, ttl_ms, pid, host, since, wait_ms_without_record, longest_possible_wait_ms
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('PTTL', KEYS[1]) == -1 then  -- a lease without expiry would block everyone for ever
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {0, '', 'lease-without-expiry', ''}
  end
  local holder = ''  -- its token, for the crash proof (a key of another type names nobody)
  if redis.call('TYPE', KEYS[1]).ok == 'string' then holder = redis.call('GET', KEYS[1]) end
  return {0, record_field(KEYS[3], 'ttl_ms') or '', '', holder}
end
local wait, why, note = tonumber(ARGV[6]), 'unknown', ''
local state = record_field(KEYS[3], 'state')
local expires = tonumber(record_field(KEYS[3], 'expires_ms') or '')
local active = tonumber(record_field(KEYS[3], 'active_ms') or '') or 0
if state == 'released' then  -- gracefully, but maybe while it was still waiting out another lease
  wait, why = math.max(0, active - now), 'inherited'
elseif state and expires then
  wait, why = math.max(0, expires - now, active - now), 'vanished'
end
if wait == 0 then why = 'none' end
wait = math.min(wait, tonumber(ARGV[7]))  -- a record edited by hand cannot make anyone wait for ever
local epoch_type = redis.call('TYPE', KEYS[2]).ok
local stored = nil
if epoch_type == 'string' then stored = tonumber(redis.call('GET', KEYS[2])) end
if epoch_type ~= 'none' and not stored then note = 'epoch-repaired' end
local epoch = math.max(stored or 0, tonumber(record_field(KEYS[3], 'epoch') or '') or 0) + 1
redis.call('SET', KEYS[2], epoch)
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'token', ARGV[1], 'epoch', epoch, 'pid', ARGV[3], 'host', ARGV[4],
  'since', ARGV[5], 'ttl_ms', ARGV[2], 'expires_ms', now + tonumber(ARGV[2]),
  'active_ms', now + wait, 'state', 'held')
return {1, epoch, wait, why, note}
"""
)

RENEW = (
    PRELUDE
    + """
-- KEYS: lease, holder, epoch. ARGV: token, ttl_ms, pid, host, since, epoch
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local epoch = tonumber(ARGV[6])
local stored = nil
if redis.call('TYPE', KEYS[3]).ok == 'string' then stored = tonumber(redis.call('GET', KEYS[3])) end
if stored and stored > epoch then return 0 end  -- somebody acquired after us: not ours any more
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if stored ~= epoch then redis.call('SET', KEYS[3], epoch) end  -- deleted or garbled: ours again
local expires = now + tonumber(ARGV[2])
if record_field(KEYS[2], 'token') == ARGV[1] then
  redis.call('HSET', KEYS[2], 'expires_ms', expires)
else  -- the record was deleted or overwritten by hand: write it again
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], 'token', ARGV[1], 'epoch', epoch, 'pid', ARGV[3], 'host', ARGV[4],
    'since', ARGV[5], 'ttl_ms', ARGV[2], 'expires_ms', expires, 'active_ms', 0, 'state', 'held')
end
return 1
"""
)

RELEASE = (
    PRELUDE
    + """
-- KEYS: lease, holder. ARGV: token, channel
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if record_field(KEYS[2], 'token') == ARGV[1] then
  redis.call('HSET', KEYS[2], 'state', 'released')  -- active_ms stays: a wait it had not finished
end
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""
)


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py swallowed.

    redis-py can turn a cancellation that arrives during a command into a timeout error (or a
    normal return), so the cancelled task would carry on renewing or retrying and never stop. The
    task still counts the request (``Task.cancelling()``), so after every Redis call we check it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _set_on_message(pubsub: PubSub, event: asyncio.Event) -> None:
    """Set ``event`` whenever a message arrives on the subscribed channel.

    A task of its own, so that waiting for the event can time out and be cancelled cleanly (redis-py's
    ``get_message(timeout=...)`` can swallow a cancellation).
    """
    async for message in pubsub.listen():
        if message["type"] == "message":
            event.set()


class RedisLock(LeaseLock):
    """The primary lock of every worker, in every container or host, that shares one Redis key."""

    backend = "redis"
    check_store = "check that Redis is running and reachable (REDIS_URL)"

    def __init__(self, url: str, prefix: str, ttl: float, retry_seconds: float) -> None:
        super().__init__(ttl, retry_seconds)
        self.prefix = prefix
        self.key = f"{prefix}:primary"
        self.epoch_key = f"{prefix}:epoch"
        self.holder_key = f"{prefix}:holder"
        self.channel = f"{prefix}:released"
        self.run_prefix = f"{prefix}:run"
        self.location = f"Redis key {self.key} at {mask_url(url)}"
        # Short socket timeouts: a renewal must fail fast enough to be retried before the deadline.
        timeout = max(0.5, ttl / 6)
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self.client = Redis.from_url(url, decode_responses=True, **options)
        # Reads for status and /health/worker go through a connection of their own: however many
        # requests ask, they can never take a connection that a renewal needs.
        self.reader = Redis.from_url(url, decode_responses=True, max_connections=2, **options)
        self._acquire_script = self.client.register_script(ACQUIRE)
        self._renew_script = self.client.register_script(RENEW)
        self._release_script = self.client.register_script(RELEASE)

    async def _acquire_lease(self, token: str, holder: Holder, wait_without_record: float) -> Acquisition:
        args = self._record(token, holder, round(wait_without_record * 1000))
        args.append(MAX_LEASE_SECONDS * 1000)
        try:
            result = await self.call(
                self._acquire_script(keys=[self.key, self.epoch_key, self.holder_key], args=args)
            )
        except LockError:
            with suppress(RedisError):  # the script stopped half way (a permission it lacks)
                await self._release_script(keys=[self.key, self.holder_key], args=[token, self.channel])
            raise
        if not result[0]:
            if result[2] == "lease-without-expiry":
                logger.error(
                    "The lease %s had no expiry (set by hand?) and would have blocked the election for "
                    "ever; it now expires in %.0f s",
                    self.key,
                    self.ttl,
                )
            ttl = int(result[1]) / 1000 if str(result[1]).isdigit() else None
            return Acquisition(won=False, holder_ttl=ttl, holder_token=str(result[3]))
        _, epoch, wait_ms, why, note = result
        if note == "epoch-repaired":
            logger.error("The epoch key %s held no number (edited by hand?): now %d", self.epoch_key, epoch)
        return Acquisition(won=True, epoch=int(epoch), wait_seconds=int(wait_ms) / 1000, why=str(why))

    async def _renew_lease(self) -> bool:
        keys = [self.key, self.holder_key, self.epoch_key]
        args = self._record(self.token, self.holder, self.epoch)
        return bool(await self.call(self._renew_script(keys=keys, args=args)))

    async def _release_lease(self, token: str) -> None:
        try:
            await self._release_script(keys=[self.key, self.holder_key], args=[token, self.channel])
        except RedisError as exc:
            logger.warning("Could not release the primary lease (it expires in %.0f s): %s", self.ttl, exc)

    async def _end_dead_lease(self, token: str) -> bool:
        # Exactly a release in the dead holder's name: deleted only if it still holds that token,
        # the record marked released (a wait the dead holder still had to do is passed on),
        # the other standbys told.
        keys, args = [self.key, self.holder_key], [token, self.channel]
        return bool(await self.call(self._release_script(keys=keys, args=args)))

    @asynccontextmanager
    async def _announcements(self) -> AsyncIterator[asyncio.Event]:
        released = asyncio.Event()
        pubsub = self.client.pubsub()
        try:
            await self.call(pubsub.subscribe(self.channel))
            listener = asyncio.create_task(_set_on_message(pubsub, released))
            try:
                yield released
            finally:
                listener.cancel()
                with suppress(asyncio.CancelledError, RedisError):
                    await listener
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def read_holder(self) -> Holder | None:
        async with self.reader.pipeline(transaction=True) as pipe:
            pipe.get(self.key)
            pipe.type(self.holder_key)
            pipe.time()
            token, kind, (seconds, microseconds) = await self.call(pipe.execute())
        if token is None:
            return None
        record = await self.call(self.reader.hgetall(self.holder_key)) if kind == "hash" else {}
        if record.get("token") != token:  # a record out of step (edited by hand): the token tells
            pid, _, rest = str(token).partition("@")
            return Holder(pid=_number(pid), host=rest.rpartition("#")[0], since="", epoch=0)
        now_ms = int(seconds) * 1000 + int(microseconds) // 1000
        active_in = (_number(record.get("active_ms")) - now_ms) / 1000
        active_at = datetime.fromtimestamp(time.time() + active_in, UTC) if active_in > 0 else None
        return Holder(
            pid=_number(record.get("pid")),
            host=str(record.get("host", "")),
            since=str(record.get("since", "")),
            epoch=_number(record.get("epoch")),
            active_at=active_at.isoformat(timespec="seconds") if active_at else None,
        )

    def run_ledger(self) -> RedisRunLedger:
        return RedisRunLedger(self)

    async def close(self) -> None:
        await self.release()
        await self.client.aclose()
        await self.reader.aclose()

    async def call(self, command: Awaitable[T]) -> T:
        """Await one Redis command (or script) of this lock scope: the one place that re-raises a
        cancellation redis-py swallowed and turns Redis's errors into ``LockError``s that say what
        to do."""
        try:
            result = await command
        except RedisError as exc:
            raise_if_cancelled()
            raise self._translate(exc) from exc
        raise_if_cancelled()
        return result

    def _record(self, token: str, holder: Holder, last: int) -> list[Any]:
        """The arguments of the acquire and renew scripts: the holder record's fields, then one more."""
        return [token, round(self.ttl * 1000), holder.pid, holder.host, holder.since, last]

    def _translate(self, exc: RedisError) -> LockError:
        where = f"the {self.location}"
        if isinstance(exc, AuthenticationError):
            fix = "check the user name and password in REDIS_URL"
            return LockError(f"Redis refused the credentials for {where}: {exc}; {fix}")
        if isinstance(exc, NoPermissionError):
            fix = f"allow the Redis user EVALSHA, SCRIPT, PUBLISH, SUBSCRIBE and writes to {self.prefix}:*"
            return LockError(f"Redis denied a command for {where}: {exc}; {fix}")
        if isinstance(exc, ReadOnlyError):
            fix = "point REDIS_URL at the primary Redis, not at a replica"
            return LockError(f"Redis is a read-only replica for {where}: {exc}; {fix}")
        if isinstance(exc, ResponseError):
            fix = f"a key under {self.prefix}: may hold a value written by hand; look at it, and delete it"
            return LockError(f"Redis refused a command for {where}: {exc}; {fix}")
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            return LockError(f"cannot reach Redis for {where}: {exc}; {self.check_store}")
        return LockError(f"Redis failed for {where}: {exc}; check Redis and REDIS_URL")


def _number(value: object) -> int:
    """A field of the holder record as a number; 0 for anything else (a record edited by hand)."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() else 0


CLAIM = """
-- KEYS: lease, epoch, run. ARGV: token, epoch, keep_seconds
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 'fenced'
end
if redis.call('TYPE', KEYS[3]).ok == 'hash' then
  if redis.call('HGET', KEYS[3], 'state') == 'done' then return 'done' end
  -- Claimed under a newer epoch: we are deposed. Under ours (a reply that was lost, a failure
  -- whose give-back failed too): ours to do again. Under an older one: its holder died; redo it.
  if (tonumber(redis.call('HGET', KEYS[3], 'epoch') or '') or 0) > tonumber(ARGV[2]) then
    return 'fenced'
  end
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'state', 'claimed', 'epoch', ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 'claimed'
"""

FINISH = """
-- KEYS: run, latest. ARGV: epoch, keep_seconds (0: for good), period
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'done', 'epoch', ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local latest = nil
if redis.call('TYPE', KEYS[2]).ok == 'string' then latest = redis.call('GET', KEYS[2]) end
if not latest or latest < ARGV[3] then redis.call('SET', KEYS[2], ARGV[3]) end
return 1
"""

CREATED = """
-- KEYS: created. Remembers when this ledger was first used (Redis's clock), unless it already does.
if redis.call('TYPE', KEYS[1]).ok ~= 'string' or not tonumber(redis.call('GET', KEYS[1])) then
  redis.call('SET', KEYS[1], redis.call('TIME')[1])
end
return redis.call('GET', KEYS[1])
"""

ABANDON = """
-- KEYS: run. ARGV: epoch
if redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HGET', KEYS[1], 'state') == 'claimed'
    and redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"""


class RedisRunLedger:
    """The run ledger of the Redis backend: one hash per run, ``<prefix>:run:<job>:<period>``,
    kept for 30 days (the runs of start-up tasks for good).

    A claim is one script that first checks the lease and the epoch: it succeeds only while this
    worker's token is in the lease and its epoch is the current one (fencing), so a deposed primary,
    even one that does not know it yet, can never claim a period.
    """

    KEEP_SECONDS = 30 * 86400

    def __init__(self, lock: RedisLock) -> None:
        self.lock = lock
        client = lock.client
        self._claim, self._finish = client.register_script(CLAIM), client.register_script(FINISH)
        self._abandon = client.register_script(ABANDON)
        self._created = client.register_script(CREATED)

    async def claim(self, job: str, period: str) -> Claim:
        if not self.lock.is_held():
            return "fenced"
        keys = [self.lock.key, self.lock.epoch_key, self._run_key(job, period)]
        args: list[Any] = [self.lock.token, self.lock.epoch, self.KEEP_SECONDS]
        outcome = await self.lock.call(self._claim(keys=keys, args=args))
        return "claimed" if outcome == "claimed" else "done" if outcome == "done" else "fenced"

    async def finish(self, job: str, period: str) -> None:
        keys = [self._run_key(job, period), self._latest_key(job)]
        keep = 0 if job.startswith(STARTUP_JOB_PREFIX) else self.KEEP_SECONDS  # start-up tasks: for good
        await self.lock.call(self._finish(keys=keys, args=[self.lock.epoch, keep, period]))

    async def abandon(self, job: str, period: str) -> None:
        await self.lock.call(self._abandon(keys=[self._run_key(job, period)], args=[self.lock.epoch]))

    async def last_done(self, job: str) -> str | None:
        key = self._latest_key(job)
        if await self.lock.call(self.lock.client.type(key)) != "string":
            return None
        period = await self.lock.call(self.lock.client.get(key))
        return str(period) if period else None

    async def is_done(self, job: str, period: str) -> bool:
        state = await self.lock.call(self.lock.reader.hget(self._run_key(job, period), "state"))
        return state == "done"

    async def created_at(self) -> float:
        return float(await self.lock.call(self._created(keys=[f"{self.lock.run_prefix}-created"])))

    def _run_key(self, job: str, period: str) -> str:
        return f"{self.lock.run_prefix}:{job}:{period}"

    def _latest_key(self, job: str) -> str:
        return f"{self.lock.run_prefix}-latest:{job}"


@asynccontextmanager
async def demo_scope(settings: Settings) -> AsyncIterator[Settings]:
    """Settings for ``python -m ... demo``: keys of its own (``<prefix>-demo-<random>:*``), deleted after."""
    prefix = f"{settings.lock_key_prefix}-demo-{uuid.uuid4().hex[:8]}"
    demo = settings.model_copy(update={"lock_key_prefix": prefix})
    try:
        yield demo
    finally:
        client = Redis.from_url(demo.redis_url, socket_timeout=5)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
        except RedisError as exc:
            print(f"Could not delete the demo's keys {prefix}:* ({exc}); they are harmless")
        finally:
            await client.aclose()
