"""The run ledger and the catch-up rules of scheduled jobs, in one process with real locks of the
chosen backend."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import Election, Jobs, Run, Schedule, make_lock
from {{ cookiecutter.package_name }}.coordination.jobs import (
    CURRENT_PERIOD_SECONDS,
    PERIOD_FORMAT,
    JobRunner,
    ScheduledJob,
)

from conftest import settings_from
from contract import take_over_behind_its_back
from support import run_scenario


def test_a_period_is_claimed_once_and_only_by_the_current_primary(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        first, second = make_lock(settings), make_lock(settings)
        assert await first.try_acquire()
        ledger = first.run_ledger()
        assert await ledger.claim("report", "20260101T070000Z") == "claimed"
        # Claimed again by the same primary (its reply was lost, or a failure could not give it
        # back): its own to do again.
        assert await ledger.claim("report", "20260101T070000Z") == "claimed"
        assert await ledger.claim("report", "20260102T070000Z") == "claimed"
        await ledger.finish("report", "20260102T070000Z")
        assert await ledger.claim("report", "20260102T070000Z") == "done"
        assert await ledger.last_done("report") == "20260102T070000Z"

        await first.release()  # as if it died in mid-send of the 1 January report
        assert await ledger.claim("report", "20260103T070000Z") == "fenced"  # deposed
        assert await second.try_acquire()
        successor = second.run_ledger()
        assert await successor.claim("report", "20260101T070000Z") == "claimed"  # unfinished: redone
        assert await successor.claim("report", "20260102T070000Z") == "done"  # never again
        await successor.abandon("report", "20260101T070000Z")  # a failed send gives the claim back
        assert await successor.claim("report", "20260101T070000Z") == "claimed"
        await first.close()
        await second.close()

    run_scenario(scenario)


def test_a_deposed_holder_that_still_believes_it_holds_the_lock_is_fenced_out(
    lock_env: dict[str, str],
) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        deposed = make_lock(settings)
        assert await deposed.try_acquire()
        ledger = deposed.run_ledger()
        assert await ledger.claim("report", "20260101T070000Z") == "claimed"  # then the holder is deposed

        successor = await take_over_behind_its_back(settings)

        assert deposed.is_held()  # by its own reckoning it is still primary: only the fence stops it
        assert await ledger.claim("report", "20260102T070000Z") == "fenced"
        successors = successor.run_ledger()
        assert await successors.claim("report", "20260102T070000Z") == "claimed"
        assert await successors.claim("report", "20260101T070000Z") == "claimed"  # unfinished: redone
        await successors.finish("report", "20260101T070000Z")
        assert await ledger.claim("report", "20260101T070000Z") == "fenced"
        assert await successors.last_done("report") == "20260101T070000Z"
        await deposed.close()
        await successor.close()

    run_scenario(scenario)


async def nothing(run: Run) -> None:
    """A job whose runs the tests never start: they look at which periods are due."""


def runner(settings: Settings, election: Election, schedule: Schedule) -> JobRunner:
    """The runner of a job named "report" with ``schedule``, on ``election``'s worker."""
    job = ScheduledJob("report", nothing, schedule)
    return JobRunner(job, election, Jobs(settings, [job], []))


EVERY_SECOND = "* * * * * *"


def test_catch_up_sends_recent_missed_periods_and_skips_older_ones(
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        now = datetime.now(UTC).replace(microsecond=0)
        ledger = election.lock.run_ledger()
        last_sent = f"{(now - timedelta(seconds=60)).strftime(PERIOD_FORMAT)}"
        assert await ledger.claim("report", last_sent) == "claimed"
        await ledger.finish("report", last_sent)

        due = await runner(settings, election, Schedule(EVERY_SECOND, catch_up_seconds=10)).due_periods(now)

        # The catch-up window (10 s, and the current period's 5 s), oldest first.
        assert due[0] == now - timedelta(seconds=10 + CURRENT_PERIOD_SECONDS)
        assert due[-1] == now and len(due) == 16
        await election.stop()

    with caplog.at_level(logging.WARNING):
        run_scenario(scenario)
    assert "Job report: skipping 44 period(s)" in caplog.text  # 59 missed, 15 of them still in the window


@pytest.mark.parametrize(("policy", "expected"), [("all", 16), ("latest", 1), ("none", 6)])
def test_catch_up_policies(lock_env: dict[str, str], policy: str, expected: int) -> None:
    """A minute missed: "all" runs what is inside the window, "latest" only the newest period,
    "none" only the current one (a period that came due at most 5 s ago)."""
    settings = settings_from(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        now = datetime.now(UTC).replace(microsecond=0)
        ledger = election.lock.run_ledger()
        last = f"{(now - timedelta(seconds=60)).strftime(PERIOD_FORMAT)}"
        assert await ledger.claim("report", last) == "claimed"
        await ledger.finish("report", last)
        schedule = Schedule(EVERY_SECOND, catch_up=policy, catch_up_seconds=10)  # type: ignore[arg-type]

        due = await runner(settings, election, schedule).due_periods(now)

        assert len(due) == expected and due[-1] == now, due
        await election.stop()

    run_scenario(scenario)


def every_second(lock_env: dict[str, str]) -> tuple[Settings, Schedule]:
    return settings_from(lock_env), Schedule(EVERY_SECOND, catch_up_seconds=3600.0)


def test_a_ledger_created_anew_sends_nothing_older_than_itself(lock_env: dict[str, str]) -> None:
    """Primary for ten minutes, then its ledger is lost (deleted, or Redis lost its data): nothing
    says which of those periods were run, so none of them is run again."""
    settings, schedule = every_second(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        job = runner(settings, election, schedule)
        job.promoted_at = datetime.now(UTC) - timedelta(minutes=10)
        created = datetime.fromtimestamp(await election.lock.run_ledger().created_at(), UTC)
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)

        due = await job.due_periods(now)

        assert due and min(due) >= created - timedelta(seconds=1), due[:3]
        assert len(due) <= 4  # not the 600 periods since the promotion
        await election.stop()

    run_scenario(scenario)


def test_a_report_marked_sent_in_the_future_is_ignored_with_an_error(
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings, schedule = every_second(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        job = runner(settings, election, schedule)
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        ledger = election.lock.run_ledger()
        tomorrow = f"{(now + timedelta(days=1)).strftime(PERIOD_FORMAT)}"
        assert await ledger.claim("report", tomorrow) == "claimed"  # a primary whose clock was a day ahead
        await ledger.finish("report", tomorrow)

        assert await job.due_periods(now)  # runs go on, instead of waiting for tomorrow
        await election.stop()

    with caplog.at_level(logging.ERROR):
        run_scenario(scenario)
    assert "lies in the future (a clock that was ahead, or an edited ledger); ignoring it" in caplog.text


def test_with_no_catch_up_the_current_period_is_still_sent(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)
    schedule = Schedule(EVERY_SECOND, catch_up_seconds=0.0)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        job = runner(settings, election, schedule)
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        ledger = election.lock.run_ledger()
        last = f"{(now - timedelta(seconds=10)).strftime(PERIOD_FORMAT)}"
        assert await ledger.claim("report", last) == "claimed"
        await ledger.finish("report", last)

        # The run starts a moment after its period: that period is the current one, not a missed one.
        due = await job.due_periods(now + timedelta(milliseconds=300))

        assert now in due and all(period >= now - timedelta(seconds=5) for period in due)
        await election.stop()

    run_scenario(scenario)


@pytest.mark.parametrize(("schedule", "expected"), [("*/30 2 * * *", 2), ("30 2 * * *", 1)])
def test_the_hour_that_repeats_when_summer_time_ends_sends_no_period_twice(
    schedule: str, expected: int
) -> None:
    """In Vienna, on 31 October 2027, 02:00 to 02:59 comes twice (00:00 to 01:59 UTC)."""
    times = Schedule(schedule, timezone="Europe/Vienna").fire_times(
        datetime(2027, 10, 30, 23, 0, tzinfo=UTC), datetime(2027, 10, 31, 3, 0, tzinfo=UTC)
    )

    assert len(times) == expected, times
    assert times == sorted(set(times))


def test_a_job_runner_that_outlived_its_term_runs_nothing_after_a_new_promotion(
    lock_env: dict[str, str],
) -> None:
    """A job that ignored its cancellation at a demotion must not run beside the runner of the
    worker's next promotion: the ledger fences by lock, and the lock is this worker's again."""
    settings = settings_from(lock_env)
    ran: list[str] = []

    async def record(run: Run) -> None:
        ran.append(run.key)

    async def scenario() -> None:
        lock = make_lock(settings)
        election = Election(lock)  # promoted by hand below, without the campaign of start()
        assert await lock.try_acquire()
        election.primary_since = datetime.now(UTC)
        job = ScheduledJob("report", record, Schedule(EVERY_SECOND, catch_up_seconds=10))
        stale = JobRunner(job, election, Jobs(settings, [job], []))
        await lock.release()  # demoted and promoted again: a new epoch, the same lock
        assert await lock.try_acquire() and lock.epoch == stale.term + 1

        await stale.run_due(datetime.now(UTC))
        await asyncio.wait_for(stale.loop(), 1)  # ends at once instead of running on
        assert ran == []
        assert JobRunner(job, election, Jobs(settings, [job], [])).in_term()  # the new term's runner runs
        await lock.close()

    run_scenario(scenario)
