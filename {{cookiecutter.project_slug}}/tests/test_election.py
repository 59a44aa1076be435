"""The election loop and the one-shot API, in one process with real locks of the chosen backend."""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import pairwise
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.coordination import (
    Election,
    is_primary_worker,
    make_lock,
)
from {{ cookiecutter.package_name }}.coordination import election as election_module

from conftest import settings_from
from contract import unusable_lock_env
from support import eventually, run_scenario


class Recorder:
    """A long-running singleton service that records when it starts and when it is stopped."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    async def __call__(self, election: Election) -> None:
        self.events.append(("started", election.lock.epoch))
        try:
            await asyncio.Event().wait()
        finally:
            self.events.append(("stopped", election.lock.epoch))


def test_services_run_on_the_primary_only_and_move_with_the_lock(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)
    first_service, second_service = Recorder(), Recorder()

    async def scenario() -> None:
        first = Election(make_lock(settings), [first_service], retry_seconds=0.05)
        second = Election(make_lock(settings), [second_service], retry_seconds=0.05)
        await first.start()
        await second.start()
        await eventually(lambda: len(first_service.events) == 1, "the primary's service")
        assert first.is_primary and not second.is_primary
        assert second_service.events == []
        first_epoch = first.lock.epoch
        assert first_service.events == [("started", first_epoch)]

        await first.stop()  # stops the service, then releases the lock: the standby takes over

        assert first_service.events == [("started", first_epoch), ("stopped", first_epoch)]
        await eventually(lambda: second.is_primary, "the standby to take over")
        await eventually(lambda: len(second_service.events) == 1, "the new primary's service")
        assert second_service.events == [("started", first_epoch + 1)]  # a new epoch per acquisition
        status = await second.status()
        assert status["role"] == "primary" and status["epoch"] == first_epoch + 1
        await second.stop()
        assert second_service.events[-1] == ("stopped", first_epoch + 1)

    run_scenario(scenario)


def test_a_retiring_standby_stops_campaigning(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        primary = Election(make_lock(settings))
        retiring = Election(make_lock(settings))
        staying = Election(make_lock(settings))
        for election in (primary, retiring, staying):
            await election.start()
        retiring.retire()  # what the SIGTERM hook does when the server stops this worker
        await primary.stop()
        await eventually(lambda: staying.is_primary, "the staying standby to take over")
        assert not retiring.is_primary
        await retiring.stop()
        await staying.stop()

    run_scenario(scenario)


def test_one_shot_api_answers_once(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        won, lock = await is_primary_worker(settings)
        assert won and lock is not None
        assert await is_primary_worker(settings) == (False, None)
        await lock.close()
        won_now, second_lock = await is_primary_worker(settings)
        assert won_now and second_lock is not None
        await second_lock.close()

    run_scenario(scenario)


def test_a_failing_lock_is_retried_with_a_doubling_delay_and_its_error_repeated_while_it_lasts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from(unusable_lock_env(tmp_path))
    monkeypatch.setattr(election_module, "ERROR_REPEAT_SECONDS", 0.5)  # 60 s in production
    monkeypatch.setattr(election_module, "MAX_RETRY_SECONDS", 0.4)  # 10 s in production
    attempts: list[float] = []

    async def scenario() -> None:
        lock = make_lock(settings)
        real_try_acquire = lock.try_acquire

        async def counted_try_acquire() -> bool:
            attempts.append(time.monotonic())
            return await real_try_acquire()

        lock.try_acquire = counted_try_acquire  # type: ignore[method-assign]
        election = Election(lock, retry_seconds=0.05)
        await election.start()
        await asyncio.sleep(2.0)
        assert not election.is_primary and election.lock_error
        await election.stop()

    with caplog.at_level(logging.ERROR):
        run_scenario(scenario)

    delays = [later - earlier for earlier, later in pairwise(attempts)]
    expected = [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]  # doubling from LOCK_RETRY_SECONDS, then capped
    assert len(delays) >= len(expected), delays
    for delay, wanted in zip(delays, expected, strict=False):
        assert wanted * 0.9 <= delay <= wanted + 0.15, (delays, expected)
    errors = [r.created for r in caplog.records if "Primary lock unavailable" in r.getMessage()]
    # The same error is logged once, then again whenever it has lasted another repeat interval.
    assert 3 <= len(errors) <= 5, errors
    assert all(later - earlier >= 0.5 for earlier, later in pairwise(errors)), errors


def test_a_graceful_release_wakes_a_waiting_standby_at_once(lock_env: dict[str, str]) -> None:
    """A standby that would retry only every 30 s takes over within a second of a release: the
    release is announced (lease backends), or the kernel wakes the waiter (the file lock)."""
    settings = settings_from(lock_env)
    slow_retries = {"lock_retry_seconds": 30.0, "lock_ttl_seconds": 60.0}  # (the ttl: lease backends)
    settings = settings.model_copy(
        update={k: v for k, v in slow_retries.items() if k in type(settings).model_fields}
    )

    async def scenario() -> None:
        holder, standby = make_lock(settings), make_lock(settings)
        assert await holder.try_acquire()
        assert not await standby.try_acquire()
        waiting = asyncio.create_task(standby.acquire())
        await asyncio.sleep(0.3)  # past its first try: now only an announcement (or 30 s) wakes it
        assert not waiting.done()
        released_at = time.monotonic()
        await holder.release()
        async with asyncio.timeout(5):
            await waiting
        assert time.monotonic() - released_at < 1.0
        await standby.close()
        await holder.close()

    run_scenario(scenario)
