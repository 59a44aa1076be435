"""The run ledger's fence and the lock's hygiene, against holders that do not know they lost the lock.

``test_run_ledger.py`` covers a holder deposed by a successor; these cover the lock that vanished
with nobody in its place yet (the fence must not rely on a newer epoch alone), and attempts that
lose, which must leave nothing open behind them.
"""

from __future__ import annotations

{% if cookiecutter.lock_backend == "redis" %}import asyncio
{% endif %}import os
{%- if cookiecutter.lock_backend == "file" %}
from pathlib import Path
{%- endif %}
{%- if cookiecutter.lock_backend == "redis" %}

import redis
{%- endif %}

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import make_lock

from conftest import settings_from
{% if cookiecutter.lock_backend == "redis" %}from contract import take_over_behind_its_back
{% endif %}from support import run_scenario


def test_attempts_that_lose_leave_no_descriptor_open(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        holder, other = make_lock(settings), make_lock(settings)
        assert await holder.try_acquire()
        assert not await other.try_acquire()  # a client may open its connection once
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            assert not await other.try_acquire()
        assert len(os.listdir("/proc/self/fd")) <= before + 2
        await other.close()
        await holder.close()

    run_scenario(scenario)


def test_the_last_period_done_is_the_latest_whatever_order_they_finish_in(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        lock = make_lock(settings)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        for period in ("20260101T070000Z", "20260103T070000Z", "20260102T070000Z"):  # one sent late
            assert await ledger.claim("report", period) == "claimed"
            await ledger.finish("report", period)
            assert await ledger.is_done("report", period)
        assert await ledger.last_done("report") == "20260103T070000Z"
        await lock.close()

    run_scenario(scenario)
{%- if cookiecutter.lock_backend == "redis" %}


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
{%- endif %}
{%- if cookiecutter.lock_backend in ["file", "redis"] %}


def vanish(settings: Settings) -> None:
    """Take the lock away from its holder, behind its back, and put nobody in its place."""
{%- if cookiecutter.lock_backend == "file" %}
    Path(settings.lock_path).unlink()  # deleted by hand: the holder's descriptor locks a ghost
{%- else %}
    with redis.Redis.from_url(settings.redis_url) as client:  # deleted by hand, or evicted
        assert client.delete(f"{settings.lock_key_prefix}:primary") == 1
{%- endif %}


def test_a_holder_whose_lock_vanished_is_fenced_before_it_notices(lock_env: dict[str, str]) -> None:
    """Same epoch, no successor: only the check that the lock is still this holder's stops it."""
    settings = settings_from(lock_env)

    async def scenario() -> None:
        lock = make_lock(settings)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        assert await ledger.claim("report", "20260101T070000Z") == "claimed"
        vanish(settings)
        assert lock.is_held()  # by its own reckoning it is still primary
        assert await ledger.claim("report", "20260102T070000Z") == "fenced"
        assert await ledger.claim("report", "20260101T070000Z") == "fenced"
        await lock.close()

    run_scenario(scenario)
{%- endif %}
