"""The primary lock as a lease in Redis, shared by every worker of every container or host.

The lease is the key ``<prefix>:primary``, set with ``SET NX PX`` to a token unique to this worker
(pid, host and a random part) through redis-py's ``Lock``, whose Lua scripts extend and delete the
key only while it still holds our token. So a worker can never renew or delete another's lease.

Three rules keep it to exactly one primary:

* **Leases expire.** A primary that dies stops renewing and its key expires after ``LOCK_TTL_SECONDS``;
  a standby then takes it at its next attempt (every ``LOCK_RETRY_SECONDS``).
* **The primary demotes itself before its lease can expire.** It renews every ttl/3 and counts its
  lease as lost once its last successful renewal is older than ttl minus a safety margin, measured on
  its own monotonic clock from *before* the renewal was sent. So a primary cut off from Redis, or
  paused (SIGSTOP, a long GC, a frozen VM) and then resumed, stops its singleton work before anybody
  else can acquire the key.
* **A lease granted by a restarted Redis is not used at once.** Redis may have lost the previous
  lease (no persistence, or the last second of it), while the primary holding it has not noticed
  yet. So when the last lease was granted by another Redis run, the new holder waits ttl minus the
  margin, until that primary has certainly stepped down, before it starts any singleton work.
* **Every acquisition gets a new epoch** (``INCR <prefix>:epoch``), a fencing token: writes that must
  never come from a deposed primary are accepted only together with the current epoch and token.

A primary that shuts down deletes its key and publishes on ``<prefix>:released``, so standbys
waiting on that channel take over at once instead of at their next retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import LockError as RedisLockError
from redis.exceptions import LockNotOwnedError, RedisError, WatchError

from .base import Holder, LockError

logger = logging.getLogger(__name__)


async def _set_on_message(pubsub: PubSub, event: asyncio.Event) -> None:
    """Set ``event`` whenever a message arrives on the subscribed channel.

    A task of its own, so that waiting for the event can time out and be cancelled cleanly (redis-py's
    ``get_message(timeout=...)`` can swallow a cancellation).
    """
    async for message in pubsub.listen():
        if message["type"] == "message":
            event.set()


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that redis-py swallowed.

    redis-py can turn a cancellation that arrives during a command into a timeout error (or a
    normal return), so the cancelled task would carry on renewing or retrying and never stop. The
    task still counts the request (``Task.cancelling()``), so after every Redis call we check it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def safety_margin(ttl: float) -> float:
    """How long before the lease expires the primary gives up: 2 s, or a third of a short ttl."""
    return min(2.0, ttl / 3)


def mask_url(url: str) -> str:
    """The Redis URL without its password, fit for logs and endpoints."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class RedisLock:
    """The primary lock of every worker, in every container or host, that shares one Redis key."""

    backend = "redis"

    def __init__(self, url: str, prefix: str, ttl: float, retry_seconds: float) -> None:
        self.key = f"{prefix}:primary"
        self.epoch_key = f"{prefix}:epoch"
        self.holder_key = f"{prefix}:holder"
        self.channel = f"{prefix}:released"
        self.ttl = ttl
        self.retry_seconds = retry_seconds
        self.location = f"Redis key {self.key} at {mask_url(url)}"
        self.epoch = 0
        self.token = ""
        # Short socket timeouts: a renewal must fail fast enough to be retried before the deadline.
        timeout = max(0.5, ttl / 6)
        self.client = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._lease = self.client.lock(self.key, timeout=ttl, blocking=False, thread_local=False)
        self._renewed_at: float | None = None  # monotonic time the last successful renewal was sent
        self._takeover_at = 0.0  # monotonic time before which a newly won lease must not be used

    async def try_acquire(self) -> bool:
        token = f"{os.getpid()}@{socket.gethostname()}#{uuid.uuid4().hex}"
        sent_at = time.monotonic()
        try:
            acquired = await self._lease.acquire(token=token)
        except RedisError as exc:
            raise_if_cancelled()
            raise self._unreachable(exc) from exc
        if not acquired:
            raise_if_cancelled()
            return False
        self._renewed_at, self.token = sent_at, token
        if (task := asyncio.current_task()) is not None and task.cancelling():
            await self.release()  # cancelled while the lease was being taken: give it back
            raise asyncio.CancelledError
        try:
            server = (await self.client.info("server"))["run_id"]
            previous = await self.client.get(self.holder_key)
            self.epoch = await self.client.incr(self.epoch_key)
            since = datetime.now(UTC).isoformat(timespec="seconds")
            await self.client.set(self.holder_key, f"{token} {self.epoch} {since} {server}")
        except RedisError as exc:
            await self.release()  # a lease without an epoch is no use to anybody
            raise self._unreachable(exc) from exc
        # The last lease was granted by another Redis run (or this is the first lease ever): Redis
        # restarted and may have lost a lease that a primary elsewhere still counts as valid. That
        # primary steps down at most ttl - margin after its last renewal; wait that long.
        if previous is None or str(previous).split(" ")[3:] != [server]:
            self._takeover_at = sent_at + self.ttl - safety_margin(self.ttl)
        return True

    def takeover_delay(self) -> float:
        return max(0.0, self._takeover_at - time.monotonic())

    async def acquire(self) -> None:
        """Try now, then again on every release announcement or every ``retry_seconds``."""
        released = asyncio.Event()
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)  # before trying: a release cannot slip between
            listener = asyncio.create_task(_set_on_message(pubsub, released))
            try:
                while True:
                    released.clear()
                    if await self.try_acquire():
                        return
                    with suppress(TimeoutError):
                        async with asyncio.timeout(self.retry_seconds):
                            await released.wait()
                    raise_if_cancelled()
                    if listener.done():
                        listener.result()  # the subscription broke: raise its error
            finally:
                listener.cancel()
                with suppress(asyncio.CancelledError):
                    await listener
        except RedisError as exc:
            raise self._unreachable(exc) from exc
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def hold(self) -> None:
        renew_every = self.ttl / 3
        last_attempt = time.monotonic()
        while self._renewed_at is not None:
            deadline = self._renewed_at + self.ttl - safety_margin(self.ttl)
            await asyncio.sleep(max(0.0, min(last_attempt + renew_every, deadline) - time.monotonic()))
            if not self.is_held():
                self._renewed_at = None
                raise LockError(
                    f"the primary lease ({self.location}) was not renewed for "
                    f"{self.ttl - safety_margin(self.ttl):.1f} s (Redis unreachable, or this process was "
                    "paused), so this worker stepped down before the lease could expire; check that Redis "
                    "is running and reachable (REDIS_URL)"
                )
            last_attempt = time.monotonic()
            try:
                await self._lease.extend(self.ttl, replace_ttl=True)
                raise_if_cancelled()
            except LockNotOwnedError:
                self._renewed_at = None
                logger.warning("The primary lease (%s) was taken over by another worker", self.key)
                return
            except RedisError as exc:
                raise_if_cancelled()
                logger.warning("Renewing the primary lease failed, retrying: %s", exc)
            else:
                self._renewed_at = last_attempt

    def is_held(self) -> bool:
        if self._renewed_at is None:
            return False
        return time.monotonic() - self._renewed_at < self.ttl - safety_margin(self.ttl)

    async def release(self) -> None:
        if self._lease.local.token is None:
            return
        self._renewed_at = None
        try:
            await self._lease.release()  # deletes the key only if it still holds our token
            await self.client.publish(self.channel, self.token)
        except (LockNotOwnedError, RedisLockError):
            pass  # the lease had expired already: nothing of ours to release
        except RedisError as exc:
            logger.warning("Could not release the primary lease (it expires in %.0f s): %s", self.ttl, exc)

    async def read_holder(self) -> Holder | None:
        try:
            stored_token, stored_details = await self.client.mget(self.key, self.holder_key)
        except RedisError as exc:
            raise self._unreachable(exc) from exc
        if stored_token is None:
            return None
        token, details = str(stored_token), str(stored_details or "")
        pid, _, rest = token.partition("@")
        host = rest.rpartition("#")[0]
        epoch, since = 0, ""
        if details.startswith(f"{token} "):
            _, epoch_text, since, *_ = details.split(" ")
            epoch = int(epoch_text)
        return Holder(pid=int(pid) if pid.isdigit() else 0, host=host, since=since, epoch=epoch)

    def run_ledger(self) -> RedisRunLedger:
        return RedisRunLedger(self)

    async def close(self) -> None:
        await self.release()
        await self.client.aclose()

    def _unreachable(self, exc: Exception) -> LockError:
        return LockError(
            f"cannot reach Redis for the {self.location}: {exc}; check that Redis is running and "
            "that REDIS_URL is right"
        )


class RedisRunLedger:
    """The run ledger of the Redis backend: one key per run, ``<prefix>:run:<run id>``.

    A claim is written in a transaction that watches the lease and the epoch: it succeeds only while
    this worker's token is in the lease and its epoch is the current one (fencing), so a deposed
    primary, even one that does not know it yet, can never claim a period.
    """

    KEEP_SECONDS = 30 * 86400

    def __init__(self, lock: RedisLock) -> None:
        self.lock = lock
        self.prefix = lock.key.removesuffix(":primary")

    async def claim(self, run_id: str) -> bool:
        if not self.lock.is_held():
            return False
        lock, key = self.lock, f"{self.prefix}:run:{run_id}"
        try:
            async with lock.client.pipeline(transaction=True) as pipe:
                await pipe.watch(lock.key, lock.epoch_key, key)
                token, epoch, run = await pipe.mget(lock.key, lock.epoch_key, key)
                if token != lock.token or str(epoch) != str(lock.epoch):
                    return False  # fenced: somebody else is primary now
                if run is not None:
                    state, _, run_epoch = str(run).partition(":")
                    if state == "done" or int(run_epoch) >= lock.epoch:
                        return False  # done, or in progress under this or a newer epoch
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(key, f"claimed:{lock.epoch}", ex=self.KEEP_SECONDS)
                await pipe.execute()
                return True
        except WatchError:
            return False  # the lease, the epoch or the run changed under us: not ours to do
        except RedisError as exc:
            raise lock._unreachable(exc) from exc

    async def finish(self, run_id: str) -> None:
        job, _, period = run_id.rpartition(":")
        client = self.lock.client
        try:
            await client.set(f"{self.prefix}:run:{run_id}", f"done:{self.lock.epoch}", ex=self.KEEP_SECONDS)
            latest_key = f"{self.prefix}:latest:{job}:"
            latest = await client.get(latest_key)
            if latest is None or str(latest) < period:
                await client.set(latest_key, period)
        except RedisError as exc:
            raise self.lock._unreachable(exc) from exc

    async def abandon(self, run_id: str) -> None:
        key = f"{self.prefix}:run:{run_id}"
        try:
            if await self.lock.client.get(key) == f"claimed:{self.lock.epoch}":
                await self.lock.client.delete(key)
        except RedisError as exc:
            raise self.lock._unreachable(exc) from exc

    async def latest_finished(self, prefix: str) -> str | None:
        job = prefix.removesuffix(":")
        try:
            period = await self.lock.client.get(f"{self.prefix}:latest:{job}:")
        except RedisError as exc:
            raise self.lock._unreachable(exc) from exc
        return f"{job}:{period!s}" if period else None
