"""The PostgreSQL lock: one primary across instances, fast hand-over, self-demotion, fencing, refusals,
exactly-once jobs, and secrets.

Every test runs against a PostgreSQL cluster that the tests started themselves (``backend_postgres.py``);
the fault tests kill, pause and restart it, and end sessions under the workers. The tests use a 3 s
lease (``LOCK_TTL_SECONDS=3``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, cast
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import LockError, is_primary_worker, make_lock
from {{ cookiecutter.package_name }}.coordination.postgres_lock import (
    Connection,
    PostgresLock,
    PostgresRunLedger,
    check_session,
    masked_url,
    table_names,
)

from backend_postgres import PostgresServer, mark_released
from conftest import (
    Server,
    settings_from,
    status_output,
)
from contract import take_over_behind_its_back
from support import (
    SENTINEL,
    assert_no_secret,
    assert_one_primary_at_a_time,
    both_instances,
    free_port,
    merged_events,
    owner_of,
    primaries,
    run_scenario,
    single_primary,
    wait_until,
)

TTL = 3.0
RETRY = 0.2
SLACK = 2.0  # generous allowance for process scheduling on a busy machine; catches hangs, not speed


def postgres_lock(settings: Settings) -> PostgresLock:
    lock = make_lock(settings)
    assert isinstance(lock, PostgresLock)
    return lock


def postgres_lock_ledger(lock: object) -> PostgresRunLedger:
    assert isinstance(lock, PostgresLock)
    return lock.run_ledger()


def every_worker_reports_a_lock_error(server: Server) -> bool:
    answers = server.answers_from_every_worker().values()
    return all(answer["role"] == "standby" and answer["lock_error"] for answer in answers)


def terminate_holder_session(server: PostgresServer, prefix: str) -> None:
    """End the primary's lock session from the server side, as a DBA or a restarted proxy would."""
    record, _ = table_names(prefix)
    with server.admin() as conn:
        query = sql.SQL("SELECT pg_terminate_backend(backend_pid, 5000) FROM {} WHERE state = 'held'")
        assert conn.execute(query.format(sql.Identifier(record))).fetchone() == (True,)


def new_role(server: PostgresServer, password: str, *options: str) -> str:
    name = f"role_{uuid.uuid4().hex[:8]}"
    server.create_role(name, password, *options)
    return name


def assert_attempt_refused(settings: Settings, reason: str) -> None:
    """An attempt at the lock fails with a LockError matching ``reason``, and holds nothing."""

    async def scenario() -> None:
        lock = postgres_lock(settings)
        with pytest.raises(LockError, match=reason):
            await lock.try_acquire()
        assert not lock.is_held()
        await lock.close()

    run_scenario(scenario)


# -- Many instances, one primary -----------------------------------------------------------------


def test_an_ended_session_demotes_the_primary_before_anyone_promotes(
    start_server: Callable[..., Server], backend_server: PostgresServer, lock_env: dict[str, str]
) -> None:
    first, second = both_instances(start_server)
    old_primary = single_primary(first, second)
    owner = owner_of(old_primary, first, second)

    terminate_holder_session(backend_server, lock_env["LOCK_KEY_PREFIX"])
    ended_at = time.monotonic()

    # Its next renewal (every 0.5 s) finds the session gone; the successor waits out the lease.
    owner.wait_for_log(rf"Worker role change: pid={old_primary}, primary=False", timeout=TTL)
    assert owner.event_time(old_primary, False) - ended_at < 1.0 + SLACK
    new_primary = single_primary(first, second, timeout=TTL + SLACK)
    owner_of(new_primary, first, second).wait_for_log(r"Won the primary lease .* waiting \d")
    assert_one_primary_at_a_time(merged_events(first, second))


def test_a_server_restart_never_makes_two_primaries(
    start_server: Callable[..., Server], backend_server: PostgresServer
) -> None:
    first, second = both_instances(start_server)
    old_primary = single_primary(first, second)

    backend_server.restart()  # a fast shutdown ends every session; the tables survive

    owner_of(old_primary, first, second).wait_for_log(
        rf"Worker role change: pid={old_primary}, primary=False", timeout=TTL + SLACK
    )
    single_primary(first, second, timeout=TTL + 10)  # whoever wins, once the old lease has run out
    assert_one_primary_at_a_time(merged_events(first, second))


def test_a_crashed_server_demotes_the_primary_and_nobody_is_primary_until_it_is_back(
    start_server: Callable[..., Server], backend_server: PostgresServer
) -> None:
    first, second = both_instances(start_server)
    primary = single_primary(first, second)
    owner = owner_of(primary, first, second)

    backend_server.kill()
    killed_at = time.monotonic()

    owner.wait_for_log(rf"Worker role change: pid={primary}, primary=False", timeout=TTL + SLACK)
    assert owner.event_time(primary, False) - killed_at <= TTL
    for server in (first, second):
        server.wait_for_log(r"ERROR .*cannot reach PostgreSQL")
        # Still serving; each worker reports the error once it has tried again (within a retry).
        wait_until(partial(every_worker_reports_a_lock_error, server), "every worker's lock error")
    assert primaries(first, second) == set()

    backend_server.start()  # recovers its data: the record says how long to wait

    single_primary(first, second)
    assert_one_primary_at_a_time(merged_events(first, second))


def test_server_down_at_start_then_elected_once_it_is_up(start_server: Callable[..., Server]) -> None:
    port = free_port()
    server = start_server(
        "uvicorn", workers=2, env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/postgres"}
    )

    line = server.wait_for_log(r"ERROR .*cannot reach PostgreSQL")  # the workers started and serve
    assert f"127.0.0.1:{port}" in line
    assert server.primaries() == set()
    answer = server.get("/health/worker").json()
    assert answer["role"] == "standby" and "cannot reach PostgreSQL" in answer["lock_error"]

    late = PostgresServer(port=port)
    try:
        server.wait_for_primary()  # a new database: the first holder waits one lease, then starts
        server.assert_never_two_primaries()
    finally:
        late.remove()


def test_no_renewal_runs_past_the_deadline_when_the_server_hangs(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        lock = postgres_lock(settings)
        assert await lock.try_acquire() and lock.takeover_delay() == 0
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(0.1)
        backend_server.pause()  # renewals now hang; psycopg would wait 10 s to cancel one
        try:
            started = time.monotonic()
            with pytest.raises(LockError, match="was not renewed"):
                await asyncio.wait_for(holding, TTL + SLACK)
            assert time.monotonic() - started <= TTL - 1 + 0.5  # at the deadline (ttl - margin)
        finally:
            backend_server.resume()
        await lock.close()

    run_scenario(scenario)


# -- The holder record's waits -------------------------------------------------------------------


def test_a_released_lock_is_taken_at_once_and_an_ended_session_is_waited_out(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        first, second, third = postgres_lock(settings), postgres_lock(settings), postgres_lock(settings)
        assert await first.try_acquire() and first.takeover_delay() == 0
        assert not await second.try_acquire()  # held: a standby
        await first.release()
        assert await second.try_acquire() and second.takeover_delay() == 0  # released: no wait
        assert second.epoch == first.epoch + 1

        terminate_holder_session(backend_server, settings.lock_key_prefix)
        assert await third.try_acquire()
        # Its session ended, but the second holder may not know yet: wait out its lease.
        assert TTL - 1 < third.takeover_delay() <= TTL
        holder = await third.read_holder()
        assert holder is not None and holder.epoch == third.epoch and holder.active_at is not None
        await second.hold()  # its next renewal finds the session gone: lost, at once
        assert not second.is_held()
        for lock in (first, second, third):
            await lock.close()

    run_scenario(scenario)


def test_status_and_one_shot_api_fail_closed_when_the_server_is_unreachable(
    lock_env: dict[str, str],
) -> None:
    url = f"postgresql://app:s3cret-pass@127.0.0.1:{free_port()}/app"
    settings = settings_from({**lock_env, "DATABASE_URL": url})

    assert asyncio.run(is_primary_worker(settings)) == (False, None)
    output = status_output(lock_env, DATABASE_URL=url)
    assert "unknown: cannot reach PostgreSQL for the PostgreSQL lock" in output
    assert "postgresql://app:***@127.0.0.1" in output and "s3cret-pass" not in output


# -- Refusals: one line, standby, retried --------------------------------------------------------


class Pooled:
    """Each statement on another backend, as through PgBouncer in transaction mode."""

    def __init__(self, *backends: Connection) -> None:
        self.backends = itertools.cycle(backends)

    async def execute(self, query: Any, params: Any = None) -> Any:
        return await next(self.backends).execute(query, params)


def test_a_transaction_pooling_proxy_is_refused(lock_env: dict[str, str]) -> None:
    url = lock_env["DATABASE_URL"]

    async def scenario() -> None:
        first = await psycopg.AsyncConnection.connect(url, autocommit=True)
        second = await psycopg.AsyncConnection.connect(url, autocommit=True)
        assert await check_session(first, "lock", 3) == first.info.backend_pid  # one session: fine
        with pytest.raises(LockError, match="transaction-pooling proxy such as PgBouncer"):
            await check_session(cast(Connection, Pooled(first, second)), "lock", 3)
        await first.close()
        await second.close()

    run_scenario(scenario)


def test_a_read_only_user_is_refused_with_the_fix(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    role = new_role(backend_server, "pw")
    with backend_server.admin() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(sql.Identifier(role))
        )
    settings = settings_from({**lock_env, "DATABASE_URL": backend_server.url_for(role, "pw")})

    assert_attempt_refused(settings, r"read-only .*default_transaction_read_only")
    assert asyncio.run(is_primary_worker(settings)) == (False, None)


def test_a_server_without_a_connection_to_spare_is_named_as_such(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    """Not "cannot reach": the server is up and answers "too many clients"; the fix is a limit."""
    role = new_role(backend_server, "pw", "CONNECTION LIMIT 0")
    settings = settings_from({**lock_env, "DATABASE_URL": backend_server.url_for(role, "pw")})
    assert_attempt_refused(settings, r"no connection to spare .*too many connections.*max_conn")


def test_reads_survive_sessions_the_server_ended_while_they_were_idle(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    """A DBA, a failover or a proxy ends the idle sessions: the next status read and ledger read
    (what /health/worker and /health/ready ask) answer on a new session instead of failing once;
    a standby's attempt says what happened, not "cannot reach"."""
    settings = settings_from(lock_env)

    async def scenario() -> None:
        primary, standby = postgres_lock(settings), postgres_lock(settings)
        assert await primary.try_acquire() and not await standby.try_acquire()
        ledger = postgres_lock_ledger(primary)
        assert (await primary.read_holder()) is not None and not await ledger.is_done("report", "p")
        with backend_server.admin() as conn:
            query = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s"
            ended = conn.execute(query, (f"{settings.lock_key_prefix} primary lock",)).fetchall()
            assert len(ended) == 3  # the primary's lock session and its reader, the standby's session

        assert not await ledger.is_done("report", "p")
        assert await primary.read_holder() is None  # answered: the lock went with the ended session
        with pytest.raises(LockError, match=r"PostgreSQL ended the session of .*a new session is opened"):
            await standby.try_acquire()
        await primary.close()
        await standby.close()

    run_scenario(scenario)


def test_a_user_without_create_is_refused_until_granted_or_given_tables(
    fresh_lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    role = new_role(backend_server, "pw")  # PostgreSQL 15+: no CREATE on schema public by default
    env = {**fresh_lock_env, "DATABASE_URL": backend_server.url_for(role, "pw")}
    settings = settings_from(env)

    async def attempt() -> None:
        lock = postgres_lock(settings)
        try:
            assert await lock.try_acquire()
        finally:
            await lock.close()

    with backend_server.admin() as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    with pytest.raises(
        LockError, match=r"PostgreSQL denied a statement .*grant the user of DATABASE_URL CREATE"
    ):
        asyncio.run(attempt())

    # Tables made for it by their owner (a migration, a DBA) are enough: no CREATE needed.
    mark_released(fresh_lock_env)
    with backend_server.admin() as conn:
        tables = sql.SQL(", ").join(map(sql.Identifier, table_names(settings.lock_key_prefix)))
        grant = sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}")
        conn.execute(grant.format(tables, sql.Identifier(role)))
    asyncio.run(attempt())


def test_a_run_is_recorded_done_even_when_old_runs_cannot_be_pruned(
    fresh_lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    """Pruning is housekeeping: a user without DELETE on the ledger must still see its runs done
    (before: the prune shared the transaction of "done", so every period ran again and again)."""
    role = new_role(backend_server, "pw")
    settings = settings_from({**fresh_lock_env, "DATABASE_URL": backend_server.url_for(role, "pw")})
    mark_released(fresh_lock_env)  # the tables exist, made by their owner
    with backend_server.admin() as conn:
        tables = sql.SQL(", ").join(map(sql.Identifier, table_names(settings.lock_key_prefix)))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(tables, sql.Identifier(role)))

    async def scenario() -> None:
        lock = make_lock(settings)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        assert await ledger.claim("report", "20260101T070000Z") == "claimed"
        await ledger.finish("report", "20260101T070000Z")  # its prune is refused, and only logged
        assert await ledger.claim("report", "20260101T070000Z") == "done"
        await lock.close()

    run_scenario(scenario)


def test_a_unix_socket_url_keeps_its_user_when_masked() -> None:
    url = "postgresql://app@/postgres?host=/run/postgresql&password=s3cr3tPW"
    assert masked_url(url) == "postgresql://app@/postgres?host=/run/postgresql&password=***"


# -- Fencing and exactly-once jobs ---------------------------------------------------------------


def jobs_table(server: PostgresServer) -> sql.Identifier:
    """A table of the service's own that a job writes to."""
    name = sql.Identifier(f"invoices_{uuid.uuid4().hex[:8]}")
    with server.admin() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (period text PRIMARY KEY)").format(name))
    return name


def rows(server: PostgresServer, table: sql.Identifier) -> list[str]:
    with server.admin() as conn:
        return [period for (period,) in conn.execute(sql.SQL("SELECT period FROM {}").format(table))]


def test_a_jobs_writes_commit_once_together_with_its_ledger_entry(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    settings = settings_from(lock_env)
    invoices = jobs_table(backend_server)
    insert = sql.SQL("INSERT INTO {} (period) VALUES (%s)").format(invoices)

    async def scenario() -> None:
        lock = postgres_lock(settings)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()

        with pytest.raises(RuntimeError):  # the job fails half way: nothing of it is committed
            async with ledger.transaction("invoices", "2026-01") as conn:
                assert conn is not None
                await conn.execute(insert, ("2026-01",))
                raise RuntimeError("the job failed")
        assert rows(backend_server, invoices) == [] and not await ledger.is_done("invoices", "2026-01")

        async with ledger.transaction("invoices", "2026-01") as conn:
            assert conn is not None
            await conn.execute(insert, ("2026-01",))
        assert rows(backend_server, invoices) == ["2026-01"] and await ledger.is_done("invoices", "2026-01")

        async with ledger.transaction("invoices", "2026-01") as conn:
            assert conn is None  # done already: the block does nothing
        assert await ledger.claim("invoices", "2026-01") == "done"
        await lock.close()

    run_scenario(scenario)


def test_a_deposed_primarys_transaction_commits_nothing(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    settings = settings_from(lock_env)
    invoices = jobs_table(backend_server)

    async def scenario() -> None:
        deposed = postgres_lock(settings)
        assert await deposed.try_acquire()
        ledger = deposed.run_ledger()

        successor = await take_over_behind_its_back(settings)

        assert deposed.is_held()  # by its own reckoning it is still primary: only the fence stops it
        async with ledger.transaction("invoices", "2026-02") as conn:
            assert conn is None
        assert rows(backend_server, invoices) == []
        async with postgres_lock_ledger(successor).transaction("invoices", "2026-02") as conn:
            assert conn is not None
        await deposed.close()
        await successor.close()

    run_scenario(scenario)


def test_a_session_that_ends_during_a_job_transaction_still_gives_exactly_once(
    lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    """The fence was checked when the transaction began; a successor cannot take over until that
    transaction has ended, and then finds the run done."""
    settings = settings_from(lock_env)
    invoices = jobs_table(backend_server)

    async def scenario() -> None:
        holder = postgres_lock(settings)
        assert await holder.try_acquire()
        ledger = holder.run_ledger()
        successor = postgres_lock(settings)
        async with ledger.transaction("invoices", "2026-03") as conn:
            assert conn is not None
            await conn.execute(sql.SQL("INSERT INTO {} VALUES ('2026-03')").format(invoices))
            terminate_holder_session(backend_server, settings.lock_key_prefix)
            taking = asyncio.create_task(successor.try_acquire())
            done, _ = await asyncio.wait({taking}, timeout=0.5)
            assert not done  # the successor waits for this transaction (its row lock on the record)
        assert await taking
        assert rows(backend_server, invoices) == ["2026-03"]
        assert await successor.run_ledger().claim("invoices", "2026-03") == "done"
        await holder.close()
        await successor.close()

    run_scenario(scenario)


# -- Secrets: the password of DATABASE_URL, in every form libpq accepts, in no output ---------------


def test_masked_url_hides_only_the_password() -> None:
    assert masked_url("postgresql://app:secret@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert masked_url("postgresql://app@db/app") == "postgresql://app@db/app"  # a user name is no secret
    assert masked_url("postgres://db/app?user=app&password=a+b") == "postgres://db/app?user=app&password=***"
    assert masked_url("postgresql://db/app?sslpassword=x") == "postgresql://db/app?sslpassword=***"


SECRET_FORMS = [SENTINEL, quote(SENTINEL, safe="")]  # as typed, and percent-encoded in the URL


@pytest.mark.parametrize("form", ["user-part", "query"])
def test_the_database_password_is_in_no_output(
    start_server: Callable[..., Server],
    lock_env: dict[str, str],
    backend_server: PostgresServer,
    form: str,
) -> None:
    role = new_role(backend_server, SENTINEL)
    with backend_server.admin() as conn:  # the scope's tables exist: the user needs no CREATE
        tables = sql.SQL(", ").join(map(sql.Identifier, table_names(lock_env["LOCK_KEY_PREFIX"])))
        grant = sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}")
        conn.execute(grant.format(tables, sql.Identifier(role)))
    port, password = backend_server.port, quote(SENTINEL, safe="")
    url = {
        "user-part": f"postgresql://{role}:{password}@127.0.0.1:{port}/postgres",
        "query": f"postgres://127.0.0.1:{port}/postgres?user={role}&password={password}",
    }[form]
    env = {"DATABASE_URL": url, "ALERT_RECIPIENTS": "oncall@example.com", "ALERT_DIGEST_SECONDS": "1"}
    server = start_server("uvicorn", workers=2, env=env, app="apps:noisy_app", extra=("--factory",))

    server.wait_for_primary()  # the form is accepted: the password reached PostgreSQL
    assert server.get("/leak").status_code == 200
    server.wait_for_log(r"Careless traceback")
    server.wait_for_log(r"E-mail \(console backend, not sent\)")  # the digest, written to the log
    holder_output = status_output(lock_env, DATABASE_URL=url)
    assert "primary: pid=" in holder_output and "***" in holder_output

    backend_server.stop()  # now every worker reports the unreachable server, URL included
    try:
        server.wait_for_log(r"ERROR .*cannot reach PostgreSQL")
        output = (
            server.output() + server.get("/health/worker").text + status_output(lock_env, DATABASE_URL=url)
        )
    finally:
        backend_server.start()
    assert_no_secret(output + holder_output, *SECRET_FORMS)
    assert "Careless log line: ***" in output


def test_a_wrong_password_keeps_every_worker_standby_and_is_not_shown(
    start_server: Callable[..., Server], lock_env: dict[str, str], backend_server: PostgresServer
) -> None:
    role = new_role(backend_server, "the-right-one")
    url = backend_server.url_for(role, quote(SENTINEL, safe=""))
    server = start_server("uvicorn", workers=2, env={"DATABASE_URL": url})

    line = server.wait_for_log(r"ERROR .*Primary lock unavailable.*PostgreSQL refused the credentials")
    assert f"postgresql://{role}:***@127.0.0.1" in line and "check the user name and password" in line
    assert server.primaries() == set()
    answer = server.get("/health/worker").json()
    assert answer["role"] == "standby" and "refused the credentials" in answer["lock_error"]
    output = server.output() + str(answer) + status_output(lock_env, DATABASE_URL=url)
    assert_no_secret(output, *SECRET_FORMS)


def test_the_ledger_prunes_old_runs_but_keeps_start_up_tasks_for_good(lock_env: dict[str, str]) -> None:
    """A start-up task's run is the memory of a release: forgetting it would run the task again."""
    settings = settings_from(lock_env)
    _, runs = table_names(settings.lock_key_prefix)

    async def scenario() -> None:
        lock = make_lock(settings)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        for job, period in [("startup:migrate", "1.0.0"), ("report", "20260101T070000Z")]:
            assert await ledger.claim(job, period) == "claimed"
            await ledger.finish(job, period)
        age = sql.SQL("UPDATE {} SET updated_at = now() - interval '40 days'").format(sql.Identifier(runs))
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(age)  # both a month old
        for job, period in [("startup:migrate", "2.0.0"), ("report", "20260301T070000Z")]:
            assert await ledger.claim(job, period) == "claimed"
            await ledger.finish(job, period)  # prunes what is older than 30 days

        assert await ledger.is_done("startup:migrate", "1.0.0")
        assert not await ledger.is_done("report", "20260101T070000Z")
        await lock.close()

    run_scenario(scenario)
