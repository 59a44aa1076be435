"""The run ledger's fence and the lock's hygiene, against holders that do not know they lost the lock.

``test_run_ledger.py`` covers a holder deposed by a successor; these cover the lock that vanished
with nobody in its place yet (the fence must not rely on a newer epoch alone), and attempts that
lose, which must leave nothing open behind them.
"""

from __future__ import annotations

import os

from {{ cookiecutter.package_name }}.coordination import make_lock

from conftest import settings_from
from contract import vanish
from support import run_scenario


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
