"""The Redis lease: one primary across instances, fast hand-over, self-demotion, fencing, faults.

Every test runs against a redis-server that the tests started themselves (``backend_redis.py``);
the fault tests kill, pause and restart it. The tests use a 3 s lease (``LOCK_TTL_SECONDS=3``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import (
    Election,
    LockError,
    is_primary_worker,
    make_lock,
)
from {{ cookiecutter.package_name }}.coordination.lease import MAX_LEASE_SECONDS
from {{ cookiecutter.package_name }}.coordination.redis_lock import RedisLock
from {{ cookiecutter.package_name }}.redaction import mask_url

from backend_redis import RedisServer, redis_server_binaries, take_over_behind_its_back, tls_capable_binary
from conftest import (
    PACKAGE,
    Server,
    current_holder,
    service_env,
    settings_from,
    status_output,
)
from mail_sink import MailSink, assert_each_period_once_without_gaps, mail_env
from support import (
    SENTINEL,
    assert_no_secret,
    assert_one_primary_at_a_time,
    both_instances,
    eventually,
    free_port,
    merged_events,
    owner_of,
    primaries,
    run_scenario,
    self_signed_certificate,
    single_primary,
    wait_until,
)

TTL = 3.0
RETRY = 0.2
SLACK = 2.0  # generous allowance for process scheduling on a busy machine; catches hangs, not speed


def redis_lock(settings: Settings) -> RedisLock:
    lock = make_lock(settings)
    assert isinstance(lock, RedisLock)
    return lock


def test_redis_down_demotes_the_primary_and_nobody_is_primary_until_it_is_back(
    start_server: Callable[..., Server], backend_server: RedisServer
) -> None:
    first, second = both_instances(start_server)
    primary = single_primary(first, second)
    owner = first if primary in first.worker_pids() else second

    backend_server.kill()
    killed_at = time.monotonic()

    owner.wait_for_log(rf"Worker role change: pid={primary}, primary=False", timeout=TTL + SLACK)
    assert owner.event_time(primary, False) - killed_at <= TTL  # before the lease could expire
    for server in (first, second):
        server.wait_for_log(rf"ERROR .*cannot reach Redis.*127\.0\.0\.1:{backend_server.port}")
        answer = server.get("/health/worker").json()  # still serving
        assert answer["role"] == "standby" and answer["lock_error"]
    assert primaries(first, second) == set()

    backend_server.start()  # same port, empty: the old lease is gone for good

    single_primary(first, second)
    for server in (first, second):
        server.assert_never_two_primaries()


def test_release_and_renewal_check_the_token(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        first, second = redis_lock(settings), redis_lock(settings)
        assert await first.try_acquire()
        await first.client.delete(first.key)  # the lease vanishes under a live holder
        assert await second.try_acquire()
        # The record says the first lease would have run for up to 3 s more: the new holder keeps
        # the lease, but may start singleton work only once the first holder has surely given up.
        assert TTL - 1 < second.takeover_delay() <= TTL

        await first.hold()  # renewal finds somebody else's token: hold returns (lost) at once
        assert not first.is_held()
        await first.release()  # must not delete the lease that is now second's
        holder = await second.read_holder()
        assert holder is not None and holder.epoch == second.epoch == first.epoch + 1
        assert holder.active_at is not None  # status says it is still waiting
        assert await second.client.get(second.key) == second.token
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_a_gracefully_released_or_expired_lease_is_taken_over_without_waiting(
    lock_env: dict[str, str],
) -> None:
    settings = settings_from({**lock_env, "LOCK_TTL_SECONDS": "1", "LOCK_RETRY_SECONDS": "0.1"})

    async def scenario() -> None:
        first, second, third = redis_lock(settings), redis_lock(settings), redis_lock(settings)
        assert await first.try_acquire()
        await asyncio.sleep(first.takeover_delay())  # a fresh scope: the first holder waits once
        await first.release()
        assert await second.try_acquire()
        assert second.takeover_delay() == 0  # released: nothing to wait for
        await asyncio.sleep(1.1)  # as after a crash: nobody renews, the lease expires
        assert await third.try_acquire()
        assert third.takeover_delay() == 0  # expired: its holder had stepped down long before
        for lock in (first, second, third):
            await lock.close()

    asyncio.run(scenario())


def test_the_renewals_carry_on_after_the_takeover_wait(fresh_lock_env: dict[str, str]) -> None:
    """The wait holds the lease for ttl - margin and is cut off just as a renewal falls due; the
    holder must carry on with that renewal, not start a new period that ends past its deadline
    (found by the suite: a primary demoted itself one second after its promotion)."""
    settings = settings_from(fresh_lock_env)  # a fresh prefix: the winner waits 2 s first

    async def scenario() -> None:
        election = Election(make_lock(settings), retry_seconds=RETRY)
        await election.start()
        await eventually(lambda: election.is_primary, "promotion after the wait", TTL + SLACK)
        for _ in range(40):  # 4 s: two lease lengths
            await asyncio.sleep(0.1)
            assert election.is_primary and election.lock_error is None
        await election.stop()

    run_scenario(scenario)


def test_key_prefixes_separate_services_on_one_redis(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)
    other_service = settings.model_copy(update={"lock_key_prefix": settings.lock_key_prefix + "-other"})

    async def scenario() -> None:
        ours, others = make_lock(settings), make_lock(other_service)
        assert await ours.try_acquire() and await others.try_acquire()
        await ours.close()
        await others.close()

    asyncio.run(scenario())


def test_unreachable_redis_at_start_then_back_with_a_password(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://:s3cret-pass@127.0.0.1:{port}/0"
    server = start_server("uvicorn", workers=2, env={"REDIS_URL": url})

    line = server.wait_for_log(r"ERROR .*cannot reach Redis")  # the workers started and serve
    assert mask_url(url) in line
    answer = server.get("/health/worker").json()
    assert answer["role"] == "standby" and mask_url(url) in answer["lock_error"]

    redis_server = RedisServer(tmp_path, port=port, password="s3cret-pass")
    try:
        server.wait_for_primary()  # elected as soon as Redis answers
        assert "s3cret-pass" not in server.output() + server.get("/health/worker").text
    finally:
        redis_server.stop()


def test_status_and_one_shot_api_fail_closed_when_redis_is_unreachable(lock_env: dict[str, str]) -> None:
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    settings = settings_from({**lock_env, "REDIS_URL": url})

    assert asyncio.run(is_primary_worker(settings)) == (False, None)
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", "status"],
        env=service_env(lock_env, REDIS_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"cannot reach Redis for the Redis key {settings.lock_key_prefix}:primary" in result.stderr
    assert "s3cret-pass" not in result.stderr + result.stdout


def test_masked_url_hides_only_the_password() -> None:
    assert mask_url("rediss://user:secret@cache:6380/2") == "rediss://user:***@cache:6380/2"
    assert mask_url("redis://:secret@cache") == "redis://:***@cache"
    assert mask_url("redis://secret@cache") == "redis://***@cache"  # a password in the user's place
    assert mask_url("redis://cache:6379/0?db=1&password=a+b") == "redis://cache:6379/0?db=1&password=***"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_rediss_url_with_a_password_works_over_tls(lock_env: dict[str, str], tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    binary = tls_capable_binary()  # decided before anything starts, not read from an early exit
    if binary is None:
        tried = ", ".join(redis_server_binaries())
        pytest.skip(
            f"no redis-server built with TLS (tried {tried}); install one, e.g. apt install redis-server"
        )
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    tls = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-auth-clients", "no", "--requirepass", "s3cret-pass"]
    server = subprocess.Popen([binary, *tls, "--save", "", "--dir", str(tmp_path)])
    url = f"rediss://:s3cret-pass@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    settings = settings_from({**lock_env, "REDIS_URL": url})

    async def scenario() -> bool:
        lock = redis_lock(settings)
        try:
            return await lock.try_acquire() and (await lock.read_holder()) is not None
        finally:
            await lock.close()

    try:
        assert wait_until(lambda: server.poll() is not None or _answers(settings), "redis over TLS", 20)
        assert server.poll() is None, f"{binary} exited with {server.returncode} instead of serving TLS"
        assert asyncio.run(scenario())
        assert "s3cret-pass" not in redis_lock(settings).location
    finally:
        server.terminate()
        server.wait(10)


def _answers(settings: Settings) -> bool:
    async def ping() -> bool:
        lock = redis_lock(settings)
        try:
            return bool(await lock.client.ping())
        except redis.RedisError:
            return False
        finally:
            await lock.client.aclose()

    return asyncio.run(ping())


def test_cancelling_a_renewing_primary_always_stops_it(lock_env: dict[str, str]) -> None:
    """redis-py may swallow a cancellation that arrives during a command; the lock re-raises it, or
    a primary told to shut down would renew its lease forever and its worker would never exit."""
    settings = settings_from(lock_env)

    async def scenario() -> int:
        lost = 0
        for attempt in range(150):
            lock = RedisLock(
                settings.redis_url, f"{settings.lock_key_prefix}-{attempt}", ttl=0.3, retry_seconds=1
            )
            assert await lock.try_acquire()
            holding = asyncio.create_task(lock.hold())
            await asyncio.sleep(random.uniform(0.09, 0.11))  # aim at a renewal (every 0.1 s) in flight
            holding.cancel()
            done, _ = await asyncio.wait({holding}, timeout=1)
            lost += not done
            await lock.close()
        return lost

    assert asyncio.run(scenario()) == 0


def test_a_quick_redis_restart_that_loses_the_lease_never_makes_two_primaries(
    start_server: Callable[..., Server], backend_server: RedisServer
) -> None:
    first, second = both_instances(start_server)
    old_primary = single_primary(first, second)

    backend_server.kill()  # no persistence: the lease, the epoch and the holder are gone
    backend_server.start()  # back at once, before the old primary's lease could have expired

    owner = first if old_primary in first.worker_pids() else second
    owner.wait_for_log(rf"Worker role change: pid={old_primary}, primary=False", timeout=TTL + SLACK)
    single_primary(first, second)  # whoever wins, once the old primary has stepped down
    assert_one_primary_at_a_time(merged_events(first, second))


@pytest.mark.parametrize("how", ["DEL", "FLUSHDB"])
def test_a_lease_that_vanishes_under_a_live_primary_never_makes_two_primaries(
    start_server: Callable[..., Server], backend_server: RedisServer, lock_env: dict[str, str], how: str
) -> None:
    first, second = both_instances(start_server)
    old_primary = single_primary(first, second)
    owner = owner_of(old_primary, first, second)
    client = redis.Redis(port=backend_server.port)

    # Pause the primary across the deletion, so that it cannot notice at once: the worst case.
    os.kill(old_primary, signal.SIGSTOP)
    try:
        if how == "DEL":
            client.delete(f"{lock_env['LOCK_KEY_PREFIX']}:primary")  # by hand, or evicted
        else:
            client.flushdb()  # another tool sharing the database: the holder record goes too
        lease = f"{lock_env['LOCK_KEY_PREFIX']}:primary"
        wait_until(lambda: client.exists(lease), "a standby to win the lease")
        time.sleep(1.0)  # the fault: the paused holder still believes in its lease meanwhile
    finally:
        os.kill(old_primary, signal.SIGCONT)

    owner.wait_for_log(rf"Worker role change: pid={old_primary}, primary=False", timeout=TTL + SLACK)
    new_primary = single_primary(first, second)
    assert new_primary != old_primary
    assert_one_primary_at_a_time(merged_events(first, second))
    owner_of(new_primary, first, second).wait_for_log(r"Won the primary lease .* waiting \d")


def test_instances_with_different_ttls_never_overlap_when_redis_restarts_empty(
    start_server: Callable[..., Server], backend_server: RedisServer
) -> None:
    long_lease = start_server("uvicorn", workers=2, env={"LOCK_TTL_SECONDS": "12"})
    old_primary = long_lease.wait_for_primary(timeout=15)
    # Started later with a shorter lease (a rolling deploy that changes LOCK_TTL_SECONDS): its
    # standbys read the long lease's length from the holder record while they campaign.
    short_lease = start_server("uvicorn", workers=2, env={"LOCK_TTL_SECONDS": "2"})

    os.kill(old_primary, signal.SIGSTOP)  # the holder cannot notice the restart at once
    try:
        backend_server.kill()  # no persistence: lease, record and epoch are gone
        backend_server.start()
        time.sleep(3.0)  # longer than the short lease, shorter than the long one
    finally:
        os.kill(old_primary, signal.SIGCONT)

    long_lease.wait_for_log(rf"Worker role change: pid={old_primary}, primary=False", timeout=12)
    single_primary(long_lease, short_lease)  # whoever won waited for the long lease
    assert_one_primary_at_a_time(merged_events(long_lease, short_lease))


def test_the_takeover_wait_is_visible_in_logs_health_and_status(
    start_server: Callable[..., Server], fresh_lock_env: dict[str, str]
) -> None:
    # A fresh prefix: Redis has no record of any previous holder, so the winner waits its lease out.
    lock_env = fresh_lock_env
    server = start_server("uvicorn", workers=2, env={**lock_env, "LOCK_TTL_SECONDS": "6"})
    line = server.wait_for_log(
        r"Won the primary lease \(epoch 1\), but there is no record of a previous holder"
    )
    assert "waiting 4.0 s before starting singleton work" in line
    assert server.primaries() == set()  # every worker logged primary=False at start-up

    holder = current_holder(lock_env)
    assert holder is not None and holder.active_at is not None
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", "status"],
        env=service_env(lock_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and f"pid={holder.pid} " in result.stdout
    assert "taking over: singleton work starts at" in result.stdout
    answers = [server.get("/health/worker").json() for _ in range(20)]
    waiting = [answer for answer in answers if answer["pid"] == holder.pid]
    if waiting:  # the holder answered one of them: it says how long it still waits
        assert waiting[0]["role"] == "standby" and 0 < waiting[0]["takeover_wait_seconds"] <= 4

    assert server.wait_for_primary(timeout=4 + SLACK) == holder.pid
    after = current_holder(lock_env)
    assert after is not None and after.active_at is None


def test_demo_against_an_unreachable_redis_fails_with_the_reason(lock_env: dict[str, str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", "demo", "--workers", "2"],
        env=service_env(lock_env, REDIS_URL=url),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1
    assert f"Demo election on the Redis key {lock_env['LOCK_KEY_PREFIX']}-demo-" in result.stdout
    assert "FAILED: cannot reach Redis" in result.stdout and "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("persistence", ["appendonly", "none"])
def test_a_redis_crash_never_duplicates_a_report_and_bounds_the_gap(
    start_server: Callable[..., Server], smtp_sink: MailSink, tmp_path: Path, persistence: str
) -> None:
    durable = ("--appendonly", "yes", "--appendfsync", "always") if persistence == "appendonly" else ()
    own_redis = RedisServer(tmp_path, *durable)
    try:
        env = {**mail_env(smtp_sink), "REDIS_URL": own_redis.url}
        both = both_instances(start_server, env=env)
        wait_until(lambda: len(set(smtp_sink.periods())) >= 3, "3 report periods", 60)

        own_redis.kill()  # a crash: appendonly keeps every write, without it the data is gone
        own_redis.start()
        sent_before = len(set(smtp_sink.periods()))
        wait_until(lambda: len(set(smtp_sink.periods())) >= sent_before + 5, "5 more periods", 60)
        for server in both:
            server.stop()
    finally:
        own_redis.stop()

    periods = smtp_sink.periods()
    assert [period for period, count in Counter(periods).items() if count > 1] == [], "duplicate reports"
    assert_one_primary_at_a_time(merged_events(*both))
    if persistence == "appendonly":
        assert_each_period_once_without_gaps(periods)  # the ledger survived: missed periods caught up
    else:
        # The ledger went with Redis's data: the next primary sends from its promotion on, which
        # comes once any earlier lease has surely ended (ttl 3 s, so 2 s) plus a retry.
        gaps = [later - earlier for earlier, later in pairwise(sorted(set(periods)))]
        assert max(gaps) <= timedelta(seconds=TTL + 2 * 2 + SLACK), gaps


# -- Keys that vanish, waits that are passed on, keys garbled by hand --------------------------------


async def warm(lock: RedisLock) -> None:
    """Take the lease of a scope whose last holder released it: no wait, a primary like any other."""
    await lock.client.hset(lock.holder_key, mapping={"state": "released", "active_ms": 0})
    assert await lock.try_acquire() and lock.takeover_delay() == 0


def test_a_holder_that_stops_or_dies_while_waiting_passes_its_wait_on(lock_env: dict[str, str]) -> None:
    """The lease vanishes under a primary (ttl 6); the next holder waits it out, but stops (SIGTERM)
    or dies during its wait: the one after it must still wait for the first primary."""
    settings = settings_from({**lock_env, "LOCK_TTL_SECONDS": "6"})
    short = settings.model_copy(update={"lock_ttl_seconds": 1.5, "lock_retry_seconds": 0.1})

    async def scenario() -> None:
        primary = redis_lock(settings)
        await warm(primary)
        await primary.client.delete(primary.key)  # the primary still believes in its lease
        waiting = redis_lock(short)
        assert await waiting.try_acquire() and waiting.takeover_delay() > 5
        await waiting.release()  # stopped during its wait (a deploy)
        after_stop = redis_lock(short)
        assert await after_stop.try_acquire()
        assert after_stop.takeover_delay() > 4.5  # still the first primary's lease to wait for
        await asyncio.sleep(1.6)  # it dies: its 1.5 s lease expires unrenewed
        after_crash = redis_lock(short)
        assert await after_crash.try_acquire()
        assert after_crash.takeover_delay() > 3  # and still
        for lock in (primary, waiting, after_stop, after_crash):
            await lock.close()

    run_scenario(scenario)


def test_a_primary_notices_a_lost_lease_within_half_a_second(
    lock_env: dict[str, str], backend_server: RedisServer
) -> None:
    """Whatever its ttl: an instance started after Redis lost its data knows no longer lease than its
    own, and waits only that (here 1.3 s) before it starts singleton work."""
    settings = settings_from({**lock_env, "LOCK_TTL_SECONDS": "12"})
    newcomer = settings.model_copy(update={"lock_ttl_seconds": 2.0, "lock_retry_seconds": 0.1})

    async def scenario() -> None:
        primary = redis_lock(settings)
        await warm(primary)
        holding = asyncio.create_task(primary.hold())
        await asyncio.sleep(0.1)  # right after a renewal would be the worst moment for ttl/3 (4 s)
        await primary.client.flushdb()  # or a restart without persistence
        fresh = redis_lock(newcomer)
        assert await fresh.try_acquire()
        wait = fresh.takeover_delay()
        assert 1 < wait < 1.5
        await asyncio.wait_for(holding, wait)  # the old primary gave up before the newcomer starts
        assert not primary.is_held()
        await primary.close()
        await fresh.close()

    run_scenario(scenario)


def test_the_one_shot_api_holds_the_lease_through_its_takeover_wait(fresh_lock_env: dict[str, str]) -> None:
    settings = settings_from(fresh_lock_env)  # a fresh scope: the winner waits 2 s first

    async def scenario() -> None:
        won, lock = await is_primary_worker(settings)
        assert won and lock is not None
        assert lock.is_held()  # it renewed while it waited, so the answer is still true
        await lock.close()

    run_scenario(scenario)


def test_no_renewal_runs_past_the_deadline_whatever_the_socket_timeout(
    lock_env: dict[str, str], backend_server: RedisServer
) -> None:
    settings = settings_from({**lock_env, "REDIS_URL": f"{backend_server.url}?socket_timeout=20"})

    async def scenario() -> None:
        lock = redis_lock(settings)
        await warm(lock)
        holding = asyncio.create_task(lock.hold())
        backend_server.pause()  # a renewal now hangs until its socket timeout (20 s)
        try:
            started = time.monotonic()
            with pytest.raises(LockError, match="was not renewed"):
                await asyncio.wait_for(holding, TTL + SLACK)
            assert time.monotonic() - started <= TTL - 1 + 0.5  # at the deadline (ttl - margin)
        finally:
            backend_server.resume()
        await lock.close()

    run_scenario(scenario)


def test_keys_garbled_by_hand_are_repaired_not_obeyed_for_ever(
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from({**lock_env, "LOCK_TTL_SECONDS": "1", "LOCK_RETRY_SECONDS": "0.1"})
    prefix = settings.lock_key_prefix

    async def scenario() -> None:
        first = redis_lock(settings)
        await warm(first)
        await first.client.delete(f"{prefix}:epoch")  # the fencing token, gone
        assert await first.run_ledger().claim("report", "20260101T070000Z") == "fenced"
        holding = asyncio.create_task(first.hold())
        await asyncio.sleep(0.6)  # a renewal puts its epoch back
        assert await first.run_ledger().claim("report", "20260101T070000Z") == "claimed"
        holding.cancel()
        await first.close()

        client = first.client = redis_lock(settings).client
        await client.set(f"{prefix}:epoch", "garbage")
        second = redis_lock(settings)
        assert await second.try_acquire() and second.epoch > first.epoch  # repaired, never lower
        await second.close()
        await client.set(f"{prefix}:holder", "garbage")  # a record of the wrong type
        other = redis_lock(settings)
        assert await other.try_acquire() and other.epoch > second.epoch
        assert (await other.read_holder()) is not None
        await other.close()

        await client.set(f"{prefix}:primary", "garbage")  # a lease without expiry
        third = redis_lock(settings)
        assert not await third.try_acquire()
        assert 0 < await client.pttl(f"{prefix}:primary") <= 1000  # it expires now
        await asyncio.sleep(1.1)
        assert await third.try_acquire()
        await client.hset(f"{prefix}:holder", "pid", "abc")  # garbage fields: no crash
        await client.hset(f"{prefix}:holder", "expires_ms", "99999999999999")
        assert await third.read_holder() is not None
        await client.delete(f"{prefix}:primary")
        fourth = redis_lock(settings)
        assert await fourth.try_acquire()
        assert fourth.takeover_delay() <= MAX_LEASE_SECONDS  # a wait of ages is capped
        await third.close()
        await fourth.close()
        await client.aclose()

    with caplog.at_level(logging.ERROR):
        run_scenario(scenario)
    assert "held no number (edited by hand?)" in caplog.text
    assert "had no expiry (set by hand?)" in caplog.text


# -- Secrets: the password of REDIS_URL, in every form redis-py accepts, in no output --------------


def url_forms(port: int, socket: Path) -> dict[str, str]:
    """Every way REDIS_URL can carry the password (redis-py reads the user part and the query)."""
    return {
        "user-part": f"redis://:{quote(SENTINEL, safe='')}@127.0.0.1:{port}/0",
        "user-and-password": f"redis://default:{quote(SENTINEL, safe='')}@127.0.0.1:{port}/0",
        "query": f"redis://127.0.0.1:{port}/0?password={quote(SENTINEL, safe='')}",
        "unix-socket-query": f"unix://{socket}?db=0&password={quote(SENTINEL, safe='')}",
        # A password written where the user name goes: redis-py takes it for a user name (and Redis
        # refuses it), but it is a secret all the same.
        "password-as-user": f"redis://{quote(SENTINEL, safe='')}@127.0.0.1:{port}/0",
    }


SECRET_FORMS = [SENTINEL, quote(SENTINEL, safe="")]  # as typed, and percent-encoded in the URL


@pytest.mark.parametrize("form", ["user-part", "user-and-password", "query", "unix-socket-query"])
def test_the_redis_password_is_in_no_output_in_any_url_form(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path, form: str
) -> None:
    own_redis = RedisServer(tmp_path, password=SENTINEL, unix_socket=True)
    try:
        assert own_redis.socket is not None
        url = url_forms(own_redis.port, own_redis.socket)[form]
        env = {"REDIS_URL": url, "ALERT_RECIPIENTS": "oncall@example.com", "ALERT_DIGEST_SECONDS": "1"}
        server = start_server("uvicorn", workers=2, env=env, app="apps:noisy_app", extra=("--factory",))

        server.wait_for_primary()  # the form is accepted: the password reached Redis
        assert server.get("/leak").status_code == 200
        server.wait_for_log(r"Careless traceback")
        server.wait_for_log(r"E-mail \(console backend, not sent\)")  # the digest, written to the log
        holder_output = status_output(lock_env, REDIS_URL=url)
        assert "primary: pid=" in holder_output and "***" in holder_output

        own_redis.stop()  # now every worker reports the unreachable Redis, URL included
        server.wait_for_log(r"ERROR .*cannot reach Redis")
        output = server.output() + server.get("/health/worker").text + status_output(lock_env, REDIS_URL=url)
        assert_no_secret(output + holder_output, *SECRET_FORMS)
        assert "Careless log line: ***" in output
    finally:
        own_redis.stop()


def test_a_password_written_as_the_user_name_is_not_shown(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path
) -> None:
    own_redis = RedisServer(tmp_path, password=SENTINEL, unix_socket=True)
    try:
        assert own_redis.socket is not None
        url = url_forms(own_redis.port, own_redis.socket)["password-as-user"]
        server = start_server("uvicorn", workers=2, env={"REDIS_URL": url})
        line = server.wait_for_log(r"ERROR .*Primary lock unavailable")
        assert "redis://***@127.0.0.1" in line
        output = server.output() + server.get("/health/worker").text + status_output(lock_env, REDIS_URL=url)
        assert_no_secret(output, *SECRET_FORMS)
    finally:
        own_redis.stop()


def test_a_wrong_redis_password_keeps_every_worker_standby_and_is_not_shown(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path
) -> None:
    own_redis = RedisServer(tmp_path, password="the-right-one")
    try:
        url = f"redis://:{quote(SENTINEL, safe='')}@127.0.0.1:{own_redis.port}/0"
        server = start_server("uvicorn", workers=2, env={"REDIS_URL": url})

        line = server.wait_for_log(r"ERROR .*Primary lock unavailable.*Redis refused the credentials")
        assert "redis://:***@127.0.0.1" in line
        assert server.primaries() == set()
        answer = server.get("/health/worker").json()
        assert answer["role"] == "standby" and answer["lock_error"]
        output = server.output() + str(answer) + status_output(lock_env, REDIS_URL=url)
        assert_no_secret(output, *SECRET_FORMS)
    finally:
        own_redis.stop()


def test_a_bad_redis_url_is_refused_without_showing_it(lock_env: dict[str, str]) -> None:
    url = f"http://:{SENTINEL}@127.0.0.1:6379/0"
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE],
        env=service_env(lock_env, REDIS_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3 and "invalid setting REDIS_URL=<hidden>" in result.stderr
    assert_no_secret(result.stdout + result.stderr, *SECRET_FORMS)


# -- The run ledger's keys and the holder record's expiry --------------------------------------------


def test_ledger_entries_expire_after_the_keeping_time(lock_env: dict[str, str]) -> None:
    """Claimed or done, a run is kept for 30 days, then Redis forgets it (the ledger stays small)."""
    settings = settings_from(lock_env)

    async def scenario() -> None:
        lock = make_lock(settings)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        assert await ledger.claim("report", "20260101T070000Z") == "claimed"
        assert await ledger.claim("report", "20260102T070000Z") == "claimed"
        await ledger.finish("report", "20260102T070000Z")
        with redis.Redis.from_url(settings.redis_url) as client:
            for period in ("20260101T070000Z", "20260102T070000Z"):
                ttl = client.ttl(f"{settings.lock_key_prefix}:run:report:{period}")
                assert 29 * 86400 < ttl <= 30 * 86400, (period, ttl)
        await lock.close()

    run_scenario(scenario)


def test_a_lease_that_vanishes_after_renewals_is_waited_out_from_the_last_renewal(
    lock_env: dict[str, str],
) -> None:
    """The record's expiry moves with each renewal: a successor waits out the lease the holder last
    renewed, not the one it first took (which ran out long ago)."""
    settings = settings_from(lock_env)  # ttl 3

    async def scenario() -> None:
        lock = make_lock(settings)
        assert await lock.try_acquire()
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(4)  # renewed for longer than the first lease ran
        successor = await take_over_behind_its_back(settings)
        assert successor.takeover_delay() > 1.5  # about 3 s, less the time since the last renewal
        holding.cancel()
        await lock.close()
        await successor.close()

    run_scenario(scenario)


def test_the_ledger_keeps_start_up_tasks_for_good_and_other_runs_for_a_month(
    lock_env: dict[str, str],
) -> None:
    """A start-up task's run is the memory of a release: forgetting it would run the task again."""

    async def scenario() -> None:
        lock = make_lock(settings_from(lock_env))
        assert isinstance(lock, RedisLock) and await lock.try_acquire()
        ledger = lock.run_ledger()
        for job, period in [("startup:migrate", "1.0.0"), ("report", "20260101T070000Z")]:
            assert await ledger.claim(job, period) == "claimed"
            await ledger.finish(job, period)

        assert await lock.client.ttl(f"{lock.run_prefix}:startup:migrate:1.0.0") == -1  # no expiry
        assert 29 * 86400 < await lock.client.ttl(f"{lock.run_prefix}:report:20260101T070000Z") <= 30 * 86400
        await lock.release()
        await lock.close()

    run_scenario(scenario)
