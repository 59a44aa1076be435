"""The primary lock as a PostgreSQL advisory lock, for workers that already share a database.

Each lock object keeps one connection of its own (autocommit, no pool), the *lock session*. The
primary is the worker whose session holds the session-level advisory lock ``pg_try_advisory_lock(key)``,
``key`` being a stable 64-bit hash of ``LOCK_KEY_PREFIX`` (``<prefix>`` below). PostgreSQL frees it
the moment that session ends, so a crashed worker never leaves a stale lock behind.

Two tables, created on first use (``CREATE TABLE IF NOT EXISTS``, one worker at a time):

* ``<prefix>_primary``, the holder record (see ``lease.py``): one row saying who holds the lock, its
  epoch, its backend's pid, until when its lease runs if not renewed (``expires_at``, the database's
  clock), from when it may run singleton work (``active_at``), and ``state`` (held or released).
* ``<prefix>_runs``, the run ledger: one row per (job, period), claimed or done, with the epoch of
  the primary that wrote it (the row with an empty job says when the ledger was created).

Why a lease beside the advisory lock: a session can end while its worker lives on (a network split,
``pg_terminate_backend``, a restarted server or proxy), and that worker may not notice at once. So
the holder renews ``expires_at`` every half second and steps down when it cannot (the rules in
``lease.py``); a new holder waits until then before starting singleton work. Acquiring is one
transaction that takes the record ``FOR UPDATE``, numbers the epoch (the fencing token) and writes the
record; a graceful release marks it released, unlocks and tells the standbys (``NOTIFY``), so that they
take over at once.

Exactly once, inside the database: the run ledger's claims check in the same transaction that this
session still holds the advisory lock and that the record's token and epoch are ours. And a job whose
effects live in the same database can commit them together with its ledger entry::

    ledger = election.lock.run_ledger()
    assert isinstance(ledger, PostgresRunLedger)
    async with ledger.transaction("invoices", period) as conn:
        if conn is None:
            return  # done already, or this worker is not the primary any more
        await conn.execute("INSERT INTO invoices (period, total) VALUES (%s, %s)", (period, total))
    # committed: the invoice rows and "done", or (an exception, a crash) neither

Refused, with one line naming cause and fix: a transaction-pooling proxy (PgBouncer in transaction
mode cannot keep a session-level lock), a read-only server or replica, missing privileges, wrong
credentials, a server that cannot be reached. Every psycopg error is translated in ``call``.

This module is everything the PostgreSQL backend owns: its settings, its lock, its run ledger, and
the private scope of the demo.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from pydantic import field_validator

from ..redaction import mask_url, url_secrets
from .base import STARTUP_JOB_PREFIX, Claim, Holder, LockError
from .lease import MAX_LEASE_SECONDS, Acquisition, LeaseLock, LeaseSettings, holder_is_gone

if TYPE_CHECKING:
    from ..config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]

PREFIX_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,39}")
"""LOCK_KEY_PREFIX names tables: a plain lower-case identifier, short enough for every derived name."""


class BackendSettings(LeaseSettings):
    """The PostgreSQL backend's settings (``config.Settings`` inherits them)."""

    database_url: str = "postgresql://postgres@localhost:5432/postgres"
    """The database shared by every worker of every instance; may carry a password. Must reach
    PostgreSQL itself or a pool in session mode (a lock session must stay one session)."""
    lock_key_prefix: str = {{ cookiecutter.package_name | tojson }}
    """Names the tables (``<prefix>_primary``, ``<prefix>_runs``) and derives the advisory lock's key,
    so that several services can share one database."""

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, url: str) -> str:
        try:
            options = conninfo_to_dict(url)  # what libpq will make of it, query parameters included
            ports = str(options.get("port") or "5432").split(",")
            valid = urlsplit(url).scheme in ("postgresql", "postgres")
            valid = valid and all(port.isdigit() and 0 < int(port) < 65536 for port in ports)
        except (psycopg.Error, ValueError):
            valid = False
        if not valid:
            raise ValueError(
                "must be a postgresql:// or postgres:// URL that libpq accepts, "
                "e.g. postgresql://app:password@db:5432/app"
            )
        return url

    @field_validator("lock_key_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(
                "must be 1 to 40 lower-case letters, digits or underscores, not starting with a digit "
                "(it names the tables <prefix>_primary and <prefix>_runs), e.g. my_service"
            )
        return prefix

    def backend_secrets(self) -> list[str]:
        """The secrets of these settings, in each form they may appear in (for log redaction)."""
        return url_secrets(_without_user_name(self.database_url)[0])


SECRET_SETTINGS = {"DATABASE_URL"}
"""Settings of this backend whose value may hold a password: never repeated in an error message."""


def make_lock(settings: BackendSettings) -> PostgresLock:
    return PostgresLock(
        settings.database_url,
        settings.lock_key_prefix,
        ttl=settings.lock_ttl_seconds,
        retry_seconds=settings.lock_retry_seconds,
    )


def _without_user_name(url: str) -> tuple[str, str]:
    """``(url, user)``: a user part without a password taken out of the URL.

    libpq reads ``postgresql://app@db`` as the user name ``app``, never as a password, so it is
    neither masked nor redacted (redacting "postgres" would garble every log line that names it).
    """
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" not in userinfo:
        return urlunsplit(parts._replace(netloc=host)), userinfo
    return url, ""


def masked_url(url: str) -> str:
    """DATABASE_URL without its password (in the user part or as ``?password=``), for messages."""
    rest, user = _without_user_name(url)
    masked = urlsplit(mask_url(rest))
    return urlunsplit(masked._replace(netloc=f"{user}@{masked.netloc}")) if user else masked.geturl()


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, the same in every process and version."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def table_names(prefix: str) -> tuple[str, str]:
    """The holder record's table and the run ledger's table of a lock scope."""
    return f"{prefix}_primary", f"{prefix}_runs"


def schema(prefix: str) -> list[sql.Composed]:
    """The statements that create the scope's tables, to run in one transaction.

    Concurrent ``CREATE TABLE IF NOT EXISTS`` of one table can still fail (a unique violation in
    ``pg_type``), so the first statement makes the workers create them one at a time.
    """
    record, runs = map(sql.Identifier, table_names(prefix))
    return [
        sql.SQL("SELECT pg_advisory_xact_lock({})").format(advisory_key(f"{prefix}:tables")),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
                id integer PRIMARY KEY CHECK (id = 1),
                token text NOT NULL DEFAULT '',
                epoch bigint NOT NULL DEFAULT 0,
                pid integer NOT NULL DEFAULT 0,
                host text NOT NULL DEFAULT '',
                since text NOT NULL DEFAULT '',
                backend_pid integer NOT NULL DEFAULT 0,
                ttl_ms bigint NOT NULL DEFAULT 0,
                expires_at timestamptz NOT NULL DEFAULT 'epoch',
                active_at timestamptz NOT NULL DEFAULT 'epoch',
                state text NOT NULL DEFAULT 'released' CHECK (state IN ('held', 'released')))"""
        ).format(record),
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {} (
                job text NOT NULL,
                period text NOT NULL,
                state text NOT NULL CHECK (state IN ('claimed', 'done', 'created')),
                epoch bigint NOT NULL,
                updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                PRIMARY KEY (job, period))"""
        ).format(runs),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (epoch)").format(
            sql.Identifier(f"{prefix}_runs_epoch"), runs
        ),
    ]


IDLE_SESSION_TIMEOUT: LiteralString = """SELECT CASE WHEN current_setting('server_version_num')::int >= 140000
    THEN set_config('idle_session_timeout', %s, false) END"""
"""Sets how long the lock session may stay idle before the server ends it (0: for ever)."""
CANCEL_GRACE_SECONDS = 0.25
"""How long a cancelled operation may still finish: a live server answers well within it."""


@dataclass
class _Slot:
    """One connection of a lock object: opened on first use, used by one operation at a time."""

    prepare: Callable[[Connection], Awaitable[None]] | None = None
    """Run on a new connection before its first operation (checks, tables)."""
    autocommit: bool = True
    reads_only: bool = False
    """Its operations only read: one that finds the idle connection ended by the server meanwhile (a
    restart, an administrator, a proxy) is tried once more on a new connection."""
    conn: Connection | None = None
    ready: bool = False
    in_use: asyncio.Lock = field(default_factory=asyncio.Lock)


class PostgresLock(LeaseLock):
    """The primary lock of every worker, in every container or host, that shares one database."""

    backend = "postgres"
    check_store = "check that PostgreSQL is running and reachable (DATABASE_URL)"

    def __init__(self, url: str, prefix: str, ttl: float, retry_seconds: float) -> None:
        super().__init__(ttl, retry_seconds)
        self.prefix = prefix
        self.key = advisory_key(prefix)
        self.record, self.runs = table_names(prefix)
        self.channel = f"{prefix}_released"
        self.location = f"PostgreSQL lock {self.record} at {masked_url(url)}"
        self.conninfo = make_conninfo(url, **_connection_defaults(url, prefix, ttl))
        self.session_pid = 0  # the lock session's backend, which holds the advisory lock
        self.timeout = max(2.0, ttl / 2)  # for one operation (a renewal has its own deadline)
        self._session = _Slot(prepare=self._prepare_session)
        # Reads for status and /health/worker go through a connection of their own, so that they
        # never wait for (nor delay) a renewal.
        self._reader = _Slot(reads_only=True)
        self._abandoned: set[asyncio.Future[Any]] = set()

    # -- the lease ----------------------------------------------------------------------------------

    async def _acquire_lease(self, token: str, holder: Holder, wait_without_record: float) -> Acquisition:
        async def acquire(conn: Connection) -> Acquisition:
            if not await _value(conn, "SELECT pg_try_advisory_lock(%s)", (self.key,)):
                # The holder's lease length, and the record's token for the crash proof: the
                # holder's, or (its session ended a moment ago, or a new holder has not written the
                # record yet) the last one's, whose death is as good a reason to retry at once.
                query = "SELECT CASE WHEN state = 'held' THEN ttl_ms END, token FROM {record} WHERE id = 1"
                row = await (await conn.execute(self._sql(query))).fetchone()
                ttl_ms, holder_token = row or (None, None)
                return Acquisition(
                    won=False, holder_ttl=ttl_ms / 1000 if ttl_ms else None, holder_token=holder_token or ""
                )
            try:
                async with conn.transaction():
                    return await self._take_record(conn, token, holder, wait_without_record)
            except BaseException:
                await conn.close()  # the advisory lock ends with the session: nothing is left behind
                raise

        return await self.call(acquire, keep_if_cancelled=False)

    async def _take_record(
        self, conn: Connection, token: str, holder: Holder, wait_without_record: float
    ) -> Acquisition:
        """Number the epoch and write the record, waiting out the lease the last one may still hold."""
        # Seconds until the last lease expires and until its holder was to start singleton work, in
        # the database's clock, between 0 and the longest wait (a record edited by hand, even to
        # 'infinity', cannot stall everyone for ever).
        query = """SELECT state, epoch, token,
                extract(epoch FROM least(greatest(expires_at, now), now + {longest}) - now),
                extract(epoch FROM least(greatest(active_at, now), now + {longest}) - now)
            FROM {record}, clock_timestamp() AS now WHERE id = 1 FOR UPDATE OF {record}"""
        longest = sql.SQL("interval {}").format(f"{MAX_LEASE_SECONDS} s")
        record = await (await conn.execute(self._sql(query, longest=longest))).fetchone()
        if record is None:  # a new scope, or the record was deleted by hand
            wait, why, last_epoch = wait_without_record, "unknown", 0
        else:
            state, last_epoch, last_token, expires_in, active_in = record
            # Released gracefully (maybe while it was still waiting out another lease), or its
            # holder provably died on this host: only a wait that holder still had is left.
            dead = state == "held" and holder_is_gone(last_token)
            if dead:
                logger.info(
                    "The primary (%s) died on this host: its lease is not waited for",
                    last_token.partition("#")[0],
                )
            if state == "released" or dead:
                wait, why = float(active_in), "inherited"
            else:  # its session ended, but its worker may still believe in the lease
                wait, why = float(max(expires_in, active_in)), "vanished"
        wait = min(wait, MAX_LEASE_SECONDS)
        # Never a lower epoch than one in the ledger, even when the record was deleted by hand.
        in_ledger = await _value(conn, self._sql("SELECT coalesce(max(epoch), 0) FROM {runs}"))
        epoch = max(last_epoch, in_ledger) + 1
        await conn.execute(
            self._sql(
                """INSERT INTO {record} (id, token, epoch, pid, host, since, backend_pid, ttl_ms,
                    expires_at, active_at, state)
                VALUES (1, %(token)s, %(epoch)s, %(pid)s, %(host)s, %(since)s, pg_backend_pid(),
                    %(ttl_ms)s, clock_timestamp() + %(ttl_ms)s * interval '1 ms',
                    clock_timestamp() + %(wait_ms)s * interval '1 ms', 'held')
                ON CONFLICT (id) DO UPDATE SET token = excluded.token, epoch = excluded.epoch,
                    pid = excluded.pid, host = excluded.host, since = excluded.since,
                    backend_pid = excluded.backend_pid, ttl_ms = excluded.ttl_ms,
                    expires_at = excluded.expires_at, active_at = excluded.active_at, state = 'held'"""
            ),
            {
                "token": token,
                "epoch": epoch,
                "pid": holder.pid,
                "host": holder.host,
                "since": holder.since,
                "ttl_ms": round(self.ttl * 1000),
                "wait_ms": round(wait * 1000),
            },
        )
        # A holder that stops talking (frozen, its host cut off while the socket lives on) must not
        # keep the lock for ever: the server ends its session once it has been idle for a lease
        # (renewals come every half second). PostgreSQL 14 and later; standbys keep no limit.
        await conn.execute(IDLE_SESSION_TIMEOUT, (str(round(self.ttl * 1000)),))
        return Acquisition(won=True, epoch=epoch, wait_seconds=wait, why=why if wait > 0 else "none")

    async def _renew_lease(self) -> bool:
        async def renew(conn: Connection) -> bool:
            query = """UPDATE {record} SET expires_at = clock_timestamp() + ttl_ms * interval '1 ms'
                WHERE token = %s AND epoch = %s AND {held_here} RETURNING 1"""
            return await _value(conn, self._sql(query), (self.token, self.epoch)) is not None

        try:
            return await self.call(renew, bounded=False)
        except LockError:
            if self._session.conn is None:  # the session ended, and the advisory lock with it
                return False
            raise

    async def _end_dead_lease(self, token: str) -> bool:
        # The dead holder's session ends with its process (the server frees the advisory lock a
        # moment later); marking its record released, only if it is still that holder's, spares
        # the next holder the wait for its lease.
        async def end(conn: Connection) -> bool:
            query = "UPDATE {record} SET state = 'released' WHERE token = %s AND state = 'held' RETURNING 1"
            return await _value(conn, self._sql(query), (token,)) is not None

        return await self.call(end)

    async def _release_lease(self, token: str) -> None:
        async def release(conn: Connection) -> None:
            query = "UPDATE {record} SET state = 'released' WHERE token = %s AND {held_here}"
            await conn.execute(self._sql(query), (token,))
            # Unlock, then wake the standbys (the notification is sent once this statement is done).
            await conn.execute("SELECT pg_advisory_unlock_all(), pg_notify(%s, '')", (self.channel,))
            await conn.execute(IDLE_SESSION_TIMEOUT, ("0",))

        if self._session.conn is None:
            return  # no session, no lock: it ended with the session
        try:
            await self.call(release)
        except LockError as exc:
            logger.warning("Could not release the primary lock (it is freed with its session): %s", exc)
            await self._close(self._session)

    @asynccontextmanager
    async def _announcements(self) -> AsyncIterator[asyncio.Event]:
        released = asyncio.Event()
        listener = _Slot()
        channel = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel))

        async def listen(conn: Connection) -> Connection:
            await conn.execute(channel)
            return conn

        conn = await self.call(listen, listener)

        async def set_on_notify() -> None:
            async for _ in conn.notifies():
                released.set()

        task = asyncio.create_task(set_on_notify())
        try:
            yield released
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError, psycopg.Error):
                await task
            await self._close(listener)

    # -- reading, closing ---------------------------------------------------------------------------

    async def read_holder(self) -> Holder | None:
        async def read(conn: Connection) -> Holder | None:
            query = "SELECT pid FROM pg_locks WHERE {lock} AND granted"
            backend = await _value(conn, self._sql(query))
            if backend is None:
                return None
            query = """SELECT pid, host, since, epoch, backend_pid, CASE WHEN active_at > clock_timestamp()
                THEN least(active_at, clock_timestamp() + interval '1 day') END FROM {record} WHERE id = 1"""
            try:
                row = await (await conn.execute(self._sql(query))).fetchone()
            except errors.UndefinedTable:
                row = None  # dropped by hand under a live holder
            if row is None or row[4] != backend:  # a record out of step: someone holds the lock
                return Holder(pid=0, host="", since="", epoch=0)
            pid, host, since, epoch, _, active_at = row
            active = active_at.astimezone(UTC).isoformat(timespec="seconds") if active_at else None
            return Holder(pid=pid, host=host, since=since, epoch=epoch, active_at=active)

        return await self.call(read, self._reader)

    def run_ledger(self) -> PostgresRunLedger:
        return PostgresRunLedger(self)

    async def close(self) -> None:
        await self.release()
        await self._close(self._session)
        await self._close(self._reader)
        for task in self._abandoned:  # operations on an unresponsive server (see ``call``)
            task.cancel()

    # -- the one place that talks to the server -----------------------------------------------------

    async def call(
        self,
        operation: Callable[[Connection], Awaitable[T]],
        slot: _Slot | None = None,
        *,
        bounded: bool = True,
        keep_if_cancelled: bool = True,
    ) -> T:
        """Run one operation on the lock session (or another connection of this lock), opening it
        first if needed: the one place that turns psycopg's errors into ``LockError``s that say what
        to do, forgets a connection that broke, and gives up on a server that does not answer
        within ``self.timeout`` (unless not ``bounded``: a renewal has its own deadline).

        A cancelled operation (a renewal at its deadline, a worker shutting down) may finish for a
        moment; after that its connection is abandoned to it rather than cancelled, because psycopg
        would wait up to 10 s for an unresponsive server to confirm the cancel. The abandoned session
        keeps its advisory lock until it ends, which only makes the others wait.

        Only a slot that ``reads_only`` tries again, once: the server may end an idle session at any
        time, and a read repeats safely; a write or a lock operation reports the loss instead.
        """
        slot = slot or self._session
        async with slot.in_use:
            reused = slot.conn is not None and not slot.conn.closed
            try:
                return await self._call_once(operation, slot, bounded, keep_if_cancelled)
            except LockError as error:
                broken = slot.conn is None and isinstance(error.__cause__, psycopg.OperationalError)
                if not (slot.reads_only and reused and broken):  # ended while idle: read again
                    raise
            return await self._call_once(operation, slot, bounded, keep_if_cancelled)

    async def _call_once(
        self,
        operation: Callable[[Connection], Awaitable[T]],
        slot: _Slot,
        bounded: bool,
        keep_if_cancelled: bool,
    ) -> T:
        """``call``'s one attempt, with ``slot`` in use."""

        async def run(conn: Connection) -> T:
            if not slot.ready and slot.prepare is not None:
                try:
                    await slot.prepare(conn)
                except LockError:
                    await conn.close()
                    raise
                slot.ready = True
            return await operation(conn)

        try:
            if slot.conn is None or slot.conn.closed:
                connect = psycopg.AsyncConnection.connect(self.conninfo, autocommit=slot.autocommit)
                slot.conn, slot.ready = await connect, False
            running = asyncio.ensure_future(run(slot.conn))
            async with asyncio.timeout(self.timeout if bounded else None):
                try:
                    return await asyncio.shield(running)
                except asyncio.CancelledError:
                    with suppress(asyncio.CancelledError):
                        await asyncio.wait({running}, timeout=CANCEL_GRACE_SECONDS)
                    if not (keep_if_cancelled and running.done()):
                        self._abandon(slot, running)
                    elif not running.cancelled():
                        running.exception()  # retrieved: the cancellation is what the caller sees
                    raise
        except TimeoutError:
            raise LockError(
                f"PostgreSQL did not answer within {self.timeout:g} s for the {self.location}; "
                f"{self.check_store}"
            ) from None
        except psycopg.Error as exc:
            if isinstance(exc, errors.UndefinedTable):
                slot.ready = False  # dropped by hand: created again before the next operation
            if slot.conn is not None and slot.conn.broken:
                await self._close(slot)
            raise self._translate(exc) from exc

    def _abandon(self, slot: _Slot, running: asyncio.Future[Any]) -> None:
        """Leave ``slot``'s connection to ``running`` and close it once that is done."""
        conn, slot.conn = slot.conn, None

        def finished(task: asyncio.Future[Any]) -> None:
            self._abandoned.discard(task)
            if not task.cancelled():
                task.exception()  # retrieved: nobody waits for it any more
            if conn is not None:
                conn.pgconn.finish()  # ends the session, and frees its advisory lock if it had it

        self._abandoned.add(running)
        running.add_done_callback(finished)

    async def _close(self, slot: _Slot) -> None:
        conn, slot.conn = slot.conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                await conn.close()

    async def _prepare_session(self, conn: Connection) -> None:
        """Refuse a connection that cannot hold the lock; create the tables on first use."""
        self.session_pid = await check_session(conn, self.location, round(self.ttl))
        # Checked first: a user without CREATE on the schema may still use tables made for it.
        query = "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL"
        if not await _value(conn, query, table_names(self.prefix)):
            async with conn.transaction():
                for statement in schema(self.prefix):
                    await conn.execute(statement)

    def _sql(self, query: LiteralString, **more: sql.Composable) -> sql.Composed:
        """A query naming this scope's tables ({record}, {runs}) and advisory lock ({lock},
        {held_here}: held by this very session), and any ``more`` parts."""
        lock = sql.SQL(
            "locktype = 'advisory' AND classid::bigint = {} AND objid::bigint = {} AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).format((self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF)
        held_here = sql.SQL("EXISTS (SELECT FROM pg_locks WHERE {} AND granted AND pid = pg_backend_pid())")
        return sql.SQL(query).format(
            record=sql.Identifier(self.record),
            runs=sql.Identifier(self.runs),
            lock=lock,
            held_here=held_here.format(lock),
            **more,
        )

    def _translate(self, exc: psycopg.Error) -> LockError:
        where = f"the {self.location}"
        text = " ".join(str(exc).split())  # libpq's messages span lines
        if isinstance(exc, errors.InsufficientPrivilege):
            fix = (
                "grant the user of DATABASE_URL CREATE on the schema (or create the tables once as "
                f"their owner) and SELECT, INSERT, UPDATE, DELETE on {self.record} and {self.runs}"
            )
            return LockError(f"PostgreSQL denied a statement for {where}: {text}; {fix}")
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            fix = "point DATABASE_URL at the primary server, with a user that may write"
            return LockError(f"PostgreSQL is read-only for {where}: {text}; {fix}")
        if isinstance(exc, errors.UndefinedTable):
            fix = "they are created again at the next attempt; do not drop them while the service runs"
            return LockError(f"a table of {where} is missing: {text}; {fix}")
        if "authentication failed" in text or isinstance(exc, errors.InvalidAuthorizationSpecification):
            fix = "check the user name and password in DATABASE_URL"
            return LockError(f"PostgreSQL refused the credentials for {where}: {text}; {fix}")
        if "too many connections" in text or "too many clients" in text or "slots are reserved" in text:
            fix = (
                "every worker keeps up to three connections, more while jobs run: raise max_connections "
                "(or the CONNECTION LIMIT of the user or database), or run fewer workers"
            )
            return LockError(f"PostgreSQL has no connection to spare for {where}: {text}; {fix}")
        if isinstance(exc, errors.OperatorIntervention) or "terminating connection" in text:
            fix = "a new session is opened at the next attempt"  # the text says why it ended
            return LockError(f"PostgreSQL ended the session of {where}: {text}; {fix}")
        if isinstance(exc, psycopg.OperationalError):
            return LockError(f"cannot reach PostgreSQL for {where}: {text}; {self.check_store}")
        return LockError(f"PostgreSQL failed for {where}: {text}; check PostgreSQL and DATABASE_URL")


def _connection_defaults(url: str, prefix: str, ttl: float) -> dict[str, str]:
    """libpq options, unless DATABASE_URL sets them: notice a dead server within seconds, not hours."""
    defaults = {
        "connect_timeout": str(max(2, round(ttl / 3))),
        "keepalives": "1",
        "keepalives_idle": str(max(1, round(ttl / 3))),
        "keepalives_interval": "1",
        "keepalives_count": "3",
        "tcp_user_timeout": str(round(ttl * 1000 / 2)),
        "application_name": f"{prefix} primary lock",
    }
    given = conninfo_to_dict(url)
    return {key: value for key, value in defaults.items() if key not in given}


async def _value(conn: Connection, query: LiteralString | sql.Composed, params: Any = None) -> Any:
    """The first column of the first row of ``query``, or None without a row."""
    row = await (await conn.execute(query, params)).fetchone()
    return None if row is None else row[0]


async def check_session(conn: Connection, where: str, keepalive_seconds: int) -> int:
    """Refuse a connection that cannot hold a session-level lock; return its backend's pid.

    Also asks the server to probe this connection (TCP keepalives), so that it ends the session of
    a worker whose host vanished, and frees its lock, within seconds rather than hours.
    """
    query = """SELECT pg_backend_pid(), pg_is_in_recovery(), current_setting('transaction_read_only'),
        set_config('tcp_keepalives_idle', %s, false), set_config('tcp_keepalives_interval', '1', false),
        set_config('tcp_keepalives_count', '3', false)"""
    row = await (await conn.execute(query, (str(max(1, keepalive_seconds // 3)),))).fetchone()
    assert row is not None
    pid, replica, read_only = row[0], row[1], row[2]
    if await _value(conn, "SELECT pg_backend_pid()") != pid:
        raise LockError(
            f"the connection for the {where} does not keep one database session (its backend changed "
            "between two statements): a transaction-pooling proxy such as PgBouncer in transaction "
            "mode cannot hold a session-level advisory lock; point DATABASE_URL at PostgreSQL itself, "
            "or at a pool in session mode"
        )
    if replica:
        raise LockError(
            f"PostgreSQL is a read-only replica (in recovery) for the {where}; point DATABASE_URL at "
            "the primary server"
        )
    if read_only == "on":
        raise LockError(
            f"PostgreSQL is read-only for the {where} (default_transaction_read_only is on for this "
            "user, database or server); turn it off for the service's user, e.g. ALTER ROLE ... SET "
            "default_transaction_read_only = off, or point DATABASE_URL at a writable server"
        )
    return int(pid)


class PostgresRunLedger:
    """The run ledger of the PostgreSQL backend: table ``<prefix>_runs``, one row per run.

    A claim is one transaction on the lock session that first checks, inside the database, that
    this session holds the advisory lock and that the record's token and epoch are ours (fencing),
    so a deposed primary, even one that does not know it yet, can never claim a period.
    """

    KEEP_SECONDS = 30 * 86400
    """Runs done longer ago are deleted, except each job's latest, and start-up tasks' for good."""

    def __init__(self, lock: PostgresLock) -> None:
        self.lock = lock

    async def claim(self, job: str, period: str) -> Claim:
        if not self.lock.is_held():
            return "fenced"

        async def claim(conn: Connection) -> Claim:
            async with conn.transaction():
                return await self._claim_in(conn, job, period, sql.SQL("pg_backend_pid()"))

        try:
            return await self.lock.call(claim)
        except LockError:
            if self.lock._session.conn is None:  # the session that held the lock has ended
                return "fenced"
            raise

    async def _claim_in(self, conn: Connection, job: str, period: str, session: sql.Composable) -> Claim:
        """Inside a transaction: fence, then claim (or find done) the run. ``session`` is the
        backend pid that must hold the advisory lock."""
        fence = self.lock._sql(
            "SELECT FROM {record} WHERE token = %s AND epoch = %s AND EXISTS "
            "(SELECT FROM pg_locks WHERE {lock} AND granted AND pid = {session}) FOR KEY SHARE",
            session=session,
        )
        # KEY SHARE: a new holder's acquisition (FOR UPDATE) waits until this transaction ends,
        # while our own renewals (which change no key) go on.
        if await (await conn.execute(fence, (self.lock.token, self.lock.epoch))).fetchone() is None:
            return "fenced"
        query = self.lock._sql("SELECT state, epoch FROM {runs} WHERE job = %s AND period = %s FOR UPDATE")
        row = await (await conn.execute(query, (job, period))).fetchone()
        if row is not None:
            if row[0] == "done":
                return "done"
            # Claimed under a newer epoch: we are deposed. Under ours (a reply that was lost): ours
            # to do again. Under an older one: its holder died before finishing; redo it.
            if row[1] > self.lock.epoch:
                return "fenced"
        await self._write(conn, job, period, "claimed")
        return "claimed"

    async def _write(self, conn: Connection, job: str, period: str, state: str) -> None:
        query = """INSERT INTO {runs} (job, period, state, epoch) VALUES (%s, %s, %s, %s)
            ON CONFLICT (job, period) DO UPDATE SET state = excluded.state, epoch = excluded.epoch,
                updated_at = clock_timestamp()"""
        await conn.execute(self.lock._sql(query), (job, period, state, self.lock.epoch))

    async def finish(self, job: str, period: str) -> None:
        async def finish(conn: Connection) -> None:
            await self._write(conn, job, period, "done")  # one statement: committed on its own

        async def prune(conn: Connection) -> None:
            query = """DELETE FROM {runs} WHERE job = %s AND period < %s AND state = 'done'
                AND updated_at < clock_timestamp() - %s * interval '1 s'"""
            await conn.execute(self.lock._sql(query), (job, period, self.KEEP_SECONDS))

        await self.lock.call(finish)
        if not job.startswith(STARTUP_JOB_PREFIX):  # the memory of a release is kept for good
            try:  # housekeeping after the fact: a failure (no DELETE privilege) never undoes "done"
                await self.lock.call(prune)
            except LockError as exc:
                logger.warning("Could not prune old runs of %s from the run ledger: %s", job, exc)

    async def abandon(self, job: str, period: str) -> None:
        async def abandon(conn: Connection) -> None:
            query = "DELETE FROM {runs} WHERE job = %s AND period = %s AND state = 'claimed' AND epoch = %s"
            await conn.execute(self.lock._sql(query), (job, period, self.lock.epoch))

        await self.lock.call(abandon)

    async def last_done(self, job: str) -> str | None:
        async def last_done(conn: Connection) -> str | None:
            query = "SELECT max(period) FROM {runs} WHERE job = %s AND state = 'done'"
            period = await _value(conn, self.lock._sql(query), (job,))
            return str(period) if period else None

        return await self.lock.call(last_done)

    async def is_done(self, job: str, period: str) -> bool:
        async def is_done(conn: Connection) -> bool:
            query = "SELECT state FROM {runs} WHERE job = %s AND period = %s"
            try:
                state = await _value(conn, self.lock._sql(query), (job, period))
            except errors.UndefinedTable:
                return False  # no worker has used this scope yet
            return bool(state == "done")

        return await self.lock.call(is_done, self.lock._reader)

    async def created_at(self) -> float:
        """When the ledger was created: its row with an empty job (written by the first who asks;
        gone with the table, or when the ledger is emptied)."""

        async def created_at(conn: Connection) -> float:
            insert = "INSERT INTO {runs} (job, period, state, epoch) VALUES ('', '', 'created', 0) "
            await conn.execute(self.lock._sql(insert + "ON CONFLICT DO NOTHING"))
            query = "SELECT extract(epoch FROM updated_at) FROM {runs} WHERE job = '' AND period = ''"
            return float(await _value(conn, self.lock._sql(query)))

        return await self.lock.call(created_at)

    @asynccontextmanager
    async def transaction(self, job: str, period: str) -> AsyncIterator[Connection | None]:
        """Run a job's own database writes exactly once, committed together with its ledger entry.

        Yields a connection inside an open transaction in which the run is fenced (this worker is
        the primary, checked in the database) and already marked done; the job's writes on it and
        that mark commit together when the block ends, and an exception (or a crash) rolls both
        back. Yields None when the run is done already or this worker is not the primary: then the
        block must do nothing. A connection of its own, so that a long job never delays renewals;
        a new primary cannot take over until this transaction has ended.
        """
        slot = _Slot(autocommit=False)

        async def begin(conn: Connection) -> Claim:
            claim = await self._claim_in(conn, job, period, sql.Literal(self.lock.session_pid))
            if claim == "claimed":
                await self._write(conn, job, period, "done")
            return claim

        try:
            claim = await self.lock.call(begin, slot) if self.lock.is_held() else "fenced"
            if claim != "claimed":
                yield None
                return
            assert slot.conn is not None
            yield slot.conn

            async def commit(conn: Connection) -> None:
                await conn.commit()

            await self.lock.call(commit, slot)
        finally:
            await self.lock._close(slot)  # rolls back whatever was not committed


@asynccontextmanager
async def demo_scope(settings: Settings) -> AsyncIterator[Settings]:
    """Settings for ``python -m ... demo``: tables of its own (``<prefix>_demo_<random>_*``),
    dropped after."""
    prefix = f"{settings.lock_key_prefix[:24]}_demo_{uuid.uuid4().hex[:8]}"
    demo = settings.model_copy(update={"lock_key_prefix": prefix})
    try:
        yield demo
    finally:
        tables = sql.SQL(", ").join(map(sql.Identifier, table_names(prefix)))
        try:
            async with await psycopg.AsyncConnection.connect(
                demo.database_url, autocommit=True, connect_timeout=5
            ) as conn:
                await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tables))
        except psycopg.Error as exc:
            print(f"Could not drop the demo's tables {prefix}_* ({exc}); they are harmless")
