"""The election loop and the one-shot API, in one process with real file locks (flock is per open file)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import Election, is_primary_worker
from {{ cookiecutter.package_name }}.coordination.file_lock import FileLock


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


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


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def test_services_run_on_the_primary_only_and_move_with_the_lock(lock_path: Path) -> None:
    first_service, second_service = Recorder(), Recorder()

    async def scenario() -> None:
        first = Election(FileLock(lock_path), [first_service], retry_seconds=0.05)
        second = Election(FileLock(lock_path), [second_service], retry_seconds=0.05)
        await first.start()
        await second.start()
        await eventually(lambda: first_service.events == [("started", 1)], "the primary's service")
        assert first.is_primary and not second.is_primary
        assert second_service.events == []

        await first.stop()  # stops the service, then releases the lock: the standby takes over

        assert first_service.events == [("started", 1), ("stopped", 1)]
        await eventually(lambda: second.is_primary, "the standby to take over")
        await eventually(lambda: second_service.events == [("started", 2)], "the new primary's service")
        status = await second.status()
        assert status["role"] == "primary" and status["epoch"] == 2
        await second.stop()
        assert second_service.events[-1] == ("stopped", 2)

    run(scenario)


def test_a_retiring_standby_stops_campaigning(lock_path: Path) -> None:
    async def scenario() -> None:
        primary = Election(FileLock(lock_path))
        retiring = Election(FileLock(lock_path))
        staying = Election(FileLock(lock_path))
        for election in (primary, retiring, staying):
            await election.start()
        retiring.retire()  # what the SIGTERM hook does when the server stops this worker
        await primary.stop()
        await eventually(lambda: staying.is_primary, "the staying standby to take over")
        assert not retiring.is_primary
        await retiring.stop()
        await staying.stop()

    run(scenario)


def test_start_never_raises_and_recovers_when_the_path_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = tmp_path / "primary.lock"
    link.symlink_to(tmp_path / "target.lock")

    async def scenario() -> None:
        election = Election(FileLock(link), retry_seconds=0.05)
        await election.start()
        assert not election.is_primary
        assert election.lock_error is not None and "symbolic link" in election.lock_error
        link.unlink()
        await eventually(lambda: election.is_primary, "promotion once the path is usable")
        assert election.lock_error is None
        await election.stop()

    with caplog.at_level(logging.INFO):
        run(scenario)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1  # the same error is not repeated at every retry
    assert "Primary lock is usable again" in caplog.text


def test_one_shot_api_answers_once_and_fails_closed(lock_path: Path, tmp_path: Path) -> None:
    settings = Settings(lock_path=lock_path)

    async def scenario() -> None:
        won, lock = await is_primary_worker(settings)
        assert won and lock is not None
        assert await is_primary_worker(settings) == (False, None)
        await lock.release()
        won_now, second_lock = await is_primary_worker(settings)
        assert won_now and second_lock is not None
        await second_lock.release()

        link = tmp_path / "link.lock"
        link.symlink_to(lock_path)
        # A lock that cannot even be attempted must never make the caller primary.
        assert await is_primary_worker(Settings(lock_path=link)) == (False, None)

    run(scenario)
