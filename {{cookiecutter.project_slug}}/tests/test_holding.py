"""A primary that nobody disturbs stays primary: the lock's own checks never depose it."""

from __future__ import annotations

import asyncio

from {{ cookiecutter.package_name }}.coordination import Election, make_lock

from conftest import settings_from
from support import eventually, run_scenario


def test_a_primary_left_alone_keeps_the_lock_and_its_epoch(lock_env: dict[str, str]) -> None:
    """Several rounds of the holder's periodic checks (file: verifying the path every second;
    leases: renewing), and it is still the same primary with the same epoch."""
    settings = settings_from(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings), retry_seconds=0.2)
        await election.start()
        await eventually(lambda: election.is_primary, "promotion", 10)
        since, epoch = election.primary_since, election.lock.epoch
        for _ in range(25):  # 2.5 s
            await asyncio.sleep(0.1)
            assert election.is_primary and election.lock_error is None
        assert (election.primary_since, election.lock.epoch) == (since, epoch)
        await election.stop()

    run_scenario(scenario)
