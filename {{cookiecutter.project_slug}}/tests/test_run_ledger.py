"""The run ledger and the catch-up rules of scheduled jobs, in one process with real locks of the
chosen backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import (
    Election,
    Jobs,
    Run,
    Schedule,
    StartupRun,
    make_lock,
)
from {{ cookiecutter.package_name }}.coordination import jobs as jobs_module
from {{ cookiecutter.package_name }}.coordination.base import Claim, RunLedger
from {{ cookiecutter.package_name }}.coordination.jobs import (
    CURRENT_PERIOD_SECONDS,
    PERIOD_FORMAT,
    JobRunner,
    ScheduledJob,
    StartupTask,
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


async def record_done(ledger: RunLedger, job: str, period: datetime) -> None:
    """The ledger's record that ``job`` ran ``period`` (claimed and finished, as a primary does)."""
    key = period.strftime(PERIOD_FORMAT)
    assert await ledger.claim(job, key) == "claimed"
    await ledger.finish(job, key)


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
        await record_done(ledger, "report", now - timedelta(seconds=60))

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
        await record_done(ledger, "report", now - timedelta(seconds=60))
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
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock was a day ahead, or was set back a day: neither the last run nor the ledger's
    creation, both "tomorrow", stops the job until tomorrow."""
    settings, schedule = every_second(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        job = runner(settings, election, schedule)
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        ledger = election.lock.run_ledger()
        tomorrow = now + timedelta(days=1)
        assert await ledger.claim("report", tomorrow.strftime(PERIOD_FORMAT)) == "claimed"
        await ledger.finish("report", tomorrow.strftime(PERIOD_FORMAT))

        async def created_tomorrow(self: RunLedger) -> float:
            return tomorrow.timestamp()

        monkeypatch.setattr(type(ledger), "created_at", created_tomorrow)
        assert await job.due_periods(now + timedelta(milliseconds=500))  # instead of waiting for tomorrow
        assert await job.due_periods(now + timedelta(seconds=1))
        await election.stop()

    with caplog.at_level(logging.ERROR):
        run_scenario(scenario)
    assert "last run of job report, " in caplog.text and "creation time" in caplog.text
    assert caplog.text.count("lies in the future") == 2  # once each, not at every firing


def test_a_ledger_creation_time_that_is_no_time_holds_nothing_back(
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, schedule = every_second(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()

        async def edited(self: RunLedger) -> float:
            return float("edited by hand")

        monkeypatch.setattr(type(election.lock.run_ledger()), "created_at", edited)
        now = datetime.now(UTC) + timedelta(seconds=2)
        assert await runner(settings, election, schedule).due_periods(now)
        await election.stop()

    with caplog.at_level(logging.ERROR):
        run_scenario(scenario)
    assert "creation time cannot be read" in caplog.text


def test_with_no_catch_up_the_current_period_is_still_sent(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)
    schedule = Schedule(EVERY_SECOND, catch_up_seconds=0.0)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        job = runner(settings, election, schedule)
        now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        ledger = election.lock.run_ledger()
        await record_done(ledger, "report", now - timedelta(seconds=10))

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


def test_the_repeated_hour_is_not_run_by_a_search_that_starts_inside_it() -> None:
    """The job loop searches afresh after each run: after 02:30 (summer time), the 02:30 that
    comes again an hour later (winter time) is no new period, nor is any time of a live */20."""
    nightly = Schedule("30 2 * * *", timezone="Europe/Vienna")
    after_first = datetime(2027, 10, 31, 0, 30, 1, tzinfo=UTC)  # 02:30:01 summer time

    assert nightly.fire_times(after_first, datetime(2027, 10, 31, 3, 0, tzinfo=UTC)) == []
    assert nightly.next_fire_time(after_first) == datetime(2027, 11, 1, 1, 30, tzinfo=UTC)
    live = Schedule("*/20 * * * *", timezone="Europe/Vienna")
    utc_hour = datetime(2027, 10, 31, 1, 0, tzinfo=UTC)  # when 02:00 comes again
    live_hour = live.fire_times(utc_hour - timedelta(minutes=1), utc_hour + timedelta(hours=1, minutes=1))
    assert live_hour == [datetime(2027, 10, 31, 2, 0, tzinfo=UTC)]  # 03:00 winter time: 02:xx came before


def test_catch_up_latest_runs_only_the_newest_even_after_more_than_a_thousand_missed(
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        now = datetime.now(UTC).replace(microsecond=0)
        ledger = election.lock.run_ledger()
        await record_done(ledger, "report", now - timedelta(seconds=3000))
        schedule = Schedule(EVERY_SECOND, catch_up="latest", catch_up_seconds=3600)

        assert await runner(settings, election, schedule).due_periods(now) == [now]
        await election.stop()

    with caplog.at_level(logging.WARNING):
        run_scenario(scenario)
    assert "skipping 1000 or more period(s)" in caplog.text


async def fails(run: Run) -> None:
    raise RuntimeError("the first run fails")


def test_a_job_that_never_completed_a_run_retries_the_period_its_first_primary_left(
    lock_env: dict[str, str],
) -> None:
    """The first run of a new job fails (or its primary dies in it); the next primary, promoted
    later, still runs that period (inside the catch-up window) instead of starting afresh."""
    settings = settings_from(lock_env)
    job = ScheduledJob("report", fails, Schedule(EVERY_SECOND, catch_up_seconds=3600))

    async def scenario() -> None:
        first = Election(make_lock(settings))
        await first.start()
        first_runner = JobRunner(job, first, Jobs(settings, [job], []))
        start = first_runner.promoted_at
        await first_runner.run_due(start + timedelta(seconds=2))  # fails at its first period
        await first.stop()

        successor = Election(make_lock(settings))
        await successor.start()
        later = JobRunner(job, successor, Jobs(settings, [job], []))
        later.promoted_at = start + timedelta(seconds=60)
        due = await later.due_periods(start + timedelta(seconds=61))

        assert due[0] <= start + timedelta(seconds=1), (start, due[:2])
        await successor.stop()

    run_scenario(scenario)


def test_anything_a_start_up_task_or_a_job_raises_is_retried_and_nothing_stops_for_good(
    lock_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled future awaited, ``sys.exit()``: each is one failed attempt, retried; then the
    task is done and the job runs on (its loop was not ended by its own CancelledError)."""
    monkeypatch.setattr(jobs_module, "STARTUP_FIRST_RETRY_SECONDS", 0.01)
    settings = settings_from(lock_env)
    task_attempts: list[str] = []
    job_attempts: list[str] = []

    async def misbehave(attempts: list[str], key: str) -> None:
        attempts.append(key)
        if len(attempts) == 1:
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled  # a library that cancels internally
        if len(attempts) == 2:
            raise SystemExit(1)

    async def task(run: StartupRun) -> None:
        await misbehave(task_attempts, run.key)

    async def job(run: Run) -> None:
        await misbehave(job_attempts, run.key)

    scheduled = ScheduledJob("report", job, Schedule(EVERY_SECOND))
    jobs = Jobs(settings, [scheduled], [StartupTask("flaky", task, "v1")])

    async def scenario() -> None:
        election = Election(make_lock(settings), [jobs.run_on_primary])
        await election.start()
        deadline = asyncio.get_running_loop().time() + 15
        while len(job_attempts) < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert await jobs.pending(election.lock.run_ledger()) == []
        described = {entry["name"]: entry for entry in await jobs.describe(election.lock.run_ledger())}
        await election.stop()
        assert len(task_attempts) == 3, task_attempts
        assert len(job_attempts) >= 4, job_attempts
        assert job_attempts[0] == job_attempts[1] == job_attempts[2]  # the failed period, retried
        assert described["flaky"]["last_failure"]["run"] == "startup:flaky:v1"
        assert described["report"]["last_failure"]["error"] == "SystemExit: 1"

    run_scenario(scenario)


class PausedAfterClaim:
    """Wraps a run ledger: the lease runs out while a claim is on its way (a paused process)."""

    def __init__(self, ledger: RunLedger, election: Election) -> None:
        self.ledger, self.election = ledger, election

    async def claim(self, job: str, period: str) -> Claim:
        claim = await self.ledger.claim(job, period)
        self.election.primary_since = None  # is_primary is False from now on
        return claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


def test_a_claim_granted_just_before_the_lease_ran_out_is_not_run(
    lock_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from(lock_env)
    ran: list[str] = []

    async def record(run: Run | StartupRun) -> None:
        ran.append(run.key)

    scheduled = ScheduledJob("report", record, Schedule(EVERY_SECOND))
    jobs = Jobs(settings, [scheduled], [StartupTask("task", record, "v1")])

    async def scenario() -> None:
        election = Election(make_lock(settings))
        assert await election.lock.try_acquire()
        ledger = election.lock.run_ledger()
        monkeypatch.setattr(election.lock, "run_ledger", lambda: PausedAfterClaim(ledger, election))
        for attempt in range(2):
            election.primary_since = datetime.now(UTC)
            if attempt == 0:
                await JobRunner(scheduled, election, jobs).run_due(datetime.now(UTC))
            else:
                await jobs._run_task(jobs.startup[0], election, election.lock.epoch)
        assert ran == []
        await election.lock.close()

    run_scenario(scenario)


def test_a_job_loop_stops_when_cancelled_even_if_the_job_swallows_the_cancellation(
    lock_env: dict[str, str],
) -> None:
    """asyncio.wait_for in Python 3.11 may swallow a cancellation (gh-86296)."""
    settings = settings_from(lock_env)
    started = asyncio.Event()
    runs: list[str] = []

    async def swallow(run: Run) -> None:
        runs.append(run.key)
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)

    job = ScheduledJob("report", swallow, Schedule(EVERY_SECOND))

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        loop = asyncio.create_task(JobRunner(job, election, Jobs(settings, [job], [])).loop())
        await asyncio.wait_for(started.wait(), 5)
        loop.cancel()
        await asyncio.wait([loop], timeout=3)
        assert loop.done()  # ended (or cancelled, by a ledger that noticed) instead of running on
        assert len(runs) == 1
        await election.stop()

    run_scenario(scenario)


def test_readiness_does_not_wait_behind_a_slow_job_status(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        ledger = election.lock.run_ledger()
        release = asyncio.Event()

        class SlowToDescribe(PausedAfterClaim):
            async def last_done(self, job: str) -> str | None:
                await release.wait()  # a ledger under load
                return await self.ledger.last_done(job)

        slow = cast(RunLedger, SlowToDescribe(ledger, election))
        jobs = Jobs(settings, [ScheduledJob("report", nothing, Schedule(EVERY_SECOND))], [])
        describing = asyncio.create_task(jobs.describe(slow))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(jobs.pending(slow), 2) == []
        release.set()
        await describing
        await election.stop()

    run_scenario(scenario)


def test_the_job_status_tells_since_when_a_run_is_in_progress(lock_env: dict[str, str]) -> None:
    """A run that hangs (no timeout) shows on the primary's ``/health/worker``."""
    settings = settings_from(lock_env)
    started, finish = asyncio.Event(), asyncio.Event()

    async def hangs(run: Run) -> None:
        started.set()
        await finish.wait()

    job = ScheduledJob("report", hangs, Schedule(EVERY_SECOND))
    jobs = Jobs(settings, [job], [])

    async def running_since(ledger: RunLedger) -> Any:
        await asyncio.sleep(jobs_module.STATUS_CACHE_SECONDS)
        return next(entry for entry in await jobs.describe(ledger))["running_since"]

    async def scenario() -> None:
        election = Election(make_lock(settings), [jobs.run_on_primary])
        await election.start()
        ledger = election.lock.run_ledger()
        await asyncio.wait_for(started.wait(), 10)
        since = await running_since(ledger)
        assert since is not None and datetime.fromisoformat(since) <= datetime.now(UTC)
        finish.set()
        await asyncio.sleep(0.1)
        assert await running_since(ledger) is None
        await election.stop()

    run_scenario(scenario)
