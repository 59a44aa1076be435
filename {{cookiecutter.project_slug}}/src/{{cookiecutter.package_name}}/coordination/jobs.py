"""Singleton jobs: scheduled work exactly once per period, start-up tasks once per release.

The service's jobs are declared in ``<package>/jobs.py`` with the two decorators of this module.
Both leave the function as it is (a test can call it); they only note it down. When a worker
becomes primary, the one singleton service of this module (``Jobs.run_on_primary``) runs them:

1. **Start-up tasks**, one after the other, each once per version. Before a task runs, the primary
   claims ``(startup:<name>, <version>)`` in the run ledger of the lock scope; once it returns, the
   run is marked done, so restarts and failovers with the same version skip it. A primary that dies
   mid-task leaves the claim unfinished: the next primary runs the task again (write tasks to be
   idempotent or transactional). A task that fails is retried with a growing delay. Every worker,
   primary or not, answers ``GET /health/ready`` from the same ledger (``Jobs.pending``, and
   ``Jobs.failing`` for a task that keeps failing).
2. **Scheduled jobs**, once every start-up task is done; one loop per job. Each fire time of the
   job's cron expression is a *period*, identified as ``<name>:20261128T070000Z`` (``run.key``).
   The primary claims each due period before running it and marks it done after. Claims are fenced:
   a worker that is no longer primary cannot claim. A failed run is given back and retried at the
   next firing while it is inside the catch-up window. One loop per job runs one period at a time,
   so a job never overlaps itself: a period that comes due during a slow run waits its turn.
3. **Catch-up.** Periods missed while nobody was primary (a crash, a reload) or while a job kept
   failing are run late by the policy of the job: ``"all"`` of them at most ``catch_up_seconds``
   old, oldest first; ``"latest"``, only the newest of those; ``"none"``, only the current period.
   Skipped periods are logged as a WARNING. A job that never ran starts with the first period after
   the promotion.

A run that succeeded but whose "done" could not be written (the primary died in between) is run
again by the next primary, under the same ``run.key``: pass the key to external systems that can
drop duplicates (the report uses it for its Message-ID).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args

from apscheduler.triggers.cron import CronTrigger

from ..metrics import count_job_run, count_missed_periods
from .base import STARTUP_JOB_PREFIX, LockError, RunLedger

if TYPE_CHECKING:
    from ..config import Settings
    from .election import Election

logger = logging.getLogger(__name__)

CatchUp = Literal["all", "latest", "none"]
PERIOD_FORMAT = "%Y%m%dT%H%M%SZ"
CURRENT_PERIOD_SECONDS = 5.0
"""A period that came due at most this long ago is the current one, never a missed one, so that even
``catch_up="none"`` runs it (the run starts a moment after its period)."""
MAX_PERIODS_PER_RUN = 1000
"""Bound on the periods looked at in one go (a 1-second schedule after a long outage)."""
FINISH_RETRY_SECONDS = 10.0
"""How long marking a run done is retried (doubling delays from 0.1 s) before giving up."""
STARTUP_RETRY_SECONDS = 60.0
"""Upper bound of the delay between attempts at a start-up task that keeps failing."""
MAX_SLEEP_SECONDS = 30.0
"""A job loop looks at the wall clock at least this often (the clock may be set while it sleeps)."""
STATUS_CACHE_SECONDS = 0.5
"""How long readiness and job status reuse what they read from the run ledger: a flood of probes
costs the lock backend at most one read per interval and worker."""
FAILED_JOB_PREFIX = "failed:"
"""A failed run of job ``x`` is noted as a done run of ``failed:x``, so that every worker and the
status command can tell the last failure from the shared ledger."""
NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    """APScheduler's trigger for a 5-field crontab, or 6 fields with leading seconds."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError("must have 5 crontab fields (minute hour day month weekday) or 6 (seconds first)")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields
    if any(char.isdigit() for char in weekday):
        # crontab counts Sunday as 0, APScheduler 3 counts Monday as 0: names avoid the trap.
        raise ValueError("write the weekday field with names (mon-fri, sun) or *, not numbers")
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=weekday,
            timezone=timezone,
        )
    except ValueError as exc:
        raise ValueError(f"is not a valid schedule: {exc}") from None


# -- what a job declares and receives ------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When a scheduled job runs, and what happens to the periods it missed."""

    cron: str
    """5 crontab fields, or 6 with leading seconds; weekdays as names (mon-fri)."""
    timezone: str = "UTC"
    catch_up: CatchUp = "all"
    catch_up_seconds: float = 3600.0
    """Missed periods older than this are skipped (with a WARNING), whatever the policy."""
    timeout: float | None = None
    """Seconds one run may take; a run that takes longer is cancelled and counts as failed."""
    trigger: CronTrigger = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            trigger = cron_trigger(self.cron, self.timezone)
        except ValueError as exc:
            raise ValueError(f"schedule {self.cron!r} {exc}") from None
        if self.catch_up not in get_args(CatchUp):
            raise ValueError(f"catch_up={self.catch_up!r}: must be 'all', 'latest' or 'none'")
        if not 0 <= self.catch_up_seconds <= 31 * 86400:
            raise ValueError("catch_up_seconds must be from 0 to 2678400 (31 days)")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds, or None")
        object.__setattr__(self, "trigger", trigger)

    def fire_times(self, start: datetime, end: datetime, *, inclusive: bool = False) -> list[datetime]:
        """The fire times from ``start`` to ``end``, in UTC and strictly increasing.

        The search steps on in UTC: stepping a local time across the end of summer time (when an
        hour repeats) would jump back an hour. A wall-clock time the repeated hour shows again is
        skipped, as cron does: "30 2 * * *" runs once on that day, not twice.
        """
        times: list[datetime] = []
        last_wall_clock: datetime | None = None
        fire = self.trigger.get_next_fire_time(None, start)
        while fire is not None and (fire <= end if inclusive else fire < end):
            wall_clock = fire.replace(tzinfo=None)
            if last_wall_clock is None or wall_clock > last_wall_clock:
                times.append(fire.astimezone(UTC))
                last_wall_clock = wall_clock
            if len(times) >= MAX_PERIODS_PER_RUN:
                break
            fire = self.trigger.get_next_fire_time(fire, fire.astimezone(UTC) + timedelta(microseconds=1))
        return times

    def next_fire_time(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``, in UTC (None if the schedule has ended)."""
        fire = self.trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
        return fire.astimezone(UTC) if fire is not None else None


@dataclass(frozen=True)
class Run:
    """What a scheduled job receives: the period it runs for, and where it runs."""

    job: str
    period: datetime
    """The fire time this run is for, an aware UTC datetime (not the time it actually starts)."""
    key: str
    """Stable id of this run, e.g. ``report:20261128T070000Z``: the same for every attempt, so pass
    it to external systems that can drop duplicates."""
    settings: Settings
    election: Election


@dataclass(frozen=True)
class StartupRun:
    """What a start-up task receives."""

    task: str
    version: str
    key: str
    """Stable id of this run, e.g. ``startup:prepare_storage:1.2.0``."""
    settings: Settings
    election: Election


JobFunction = Callable[[Run], Awaitable[None]]
TaskFunction = Callable[[StartupRun], Awaitable[None]]
ScheduleFromSettings = Callable[["Settings"], Schedule | None]
J = TypeVar("J", bound=JobFunction)
T = TypeVar("T", bound=TaskFunction)
V = TypeVar("V")


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    function: JobFunction
    schedule: Schedule


@dataclass(frozen=True)
class StartupTask:
    name: str
    function: TaskFunction
    version: str
    timeout: float | None = None

    @property
    def ledger_job(self) -> str:
        return f"{STARTUP_JOB_PREFIX}{self.name}"

    @property
    def key(self) -> str:
        return f"{self.ledger_job}:{self.version}"


_scheduled: dict[str, tuple[JobFunction, Schedule | ScheduleFromSettings]] = {}
_startup: dict[str, StartupTask] = {}


def scheduled(
    cron: str | ScheduleFromSettings,
    *,
    name: str | None = None,
    timezone: str = "UTC",
    catch_up: CatchUp = "all",
    catch_up_seconds: float = 3600.0,
    timeout: float | None = None,
) -> Callable[[J], J]:
    """Declare a job that the primary runs exactly once per period of ``cron``.

    ``cron`` may also be a function of the settings that returns the whole ``Schedule`` (then the
    other options come from it), or None to leave the job out (the report: no recipients, no job).
    """

    def declare(function: J) -> J:
        job = _job_name(name or function.__name__, _scheduled)
        schedule = cron if callable(cron) else Schedule(cron, timezone, catch_up, catch_up_seconds, timeout)
        _scheduled[job] = (function, schedule)
        return function

    return declare


def startup_task(
    *, name: str | None = None, version: str | None = None, timeout: float | None = None
) -> Callable[[T], T]:
    """Declare a task that must complete once per ``version`` (default: the package's version)
    before the service is ready. It must be idempotent: a primary that dies mid-task leaves it to the
    next primary, which runs it again from the start."""

    def declare(function: T) -> T:
        from .. import __version__  # here: the package imports this module while it initialises

        task = _job_name(name or function.__name__, _startup)
        _startup[task] = StartupTask(task, function, str(version or __version__), timeout)
        return function

    return declare


def _job_name(name: str, declared: dict[str, Any]) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"job name {name!r}: use letters, digits, '_', '.' and '-' (up to 100)")
    if name in declared:
        raise ValueError(f"two jobs are named {name!r}: give one of them another name=")
    return name


def declared_jobs(settings: Settings) -> Jobs:
    """The jobs declared so far (import ``<package>.jobs`` first), for these settings."""
    jobs = []
    for job, (function, schedule) in _scheduled.items():
        resolved = schedule(settings) if callable(schedule) else schedule
        if resolved is not None:
            jobs.append(ScheduledJob(job, function, resolved))
    return Jobs(settings, jobs, list(_startup.values()))


# -- running them --------------------------------------------------------------------------------


class Jobs:
    """The jobs of this service: run on the primary, reported by every worker."""

    def __init__(self, settings: Settings, scheduled: list[ScheduledJob], startup: list[StartupTask]) -> None:
        self.settings = settings
        self.scheduled = scheduled
        self.startup = startup
        self.last_errors: dict[str, str] = {}
        """The last error of each job and task seen by this worker (the log has the traceback)."""
        self._done_tasks: set[str] = set()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._reading = asyncio.Lock()

    async def run_on_primary(self, election: Election) -> None:
        """The singleton service: start-up tasks first, then every scheduled job until demoted."""
        logger.info(
            "Singleton jobs start on the primary (pid=%d, epoch=%d)", os.getpid(), election.lock.epoch
        )
        for task in self.startup:
            await self._complete(task, election)
        async with asyncio.TaskGroup() as group:  # one loop per job: jobs run side by side
            for job in self.scheduled:
                group.create_task(JobRunner(job, election, self).loop(), name=f"job {job.name}")

    async def _complete(self, task: StartupTask, election: Election) -> None:
        """Run a start-up task until it is done (by us or anyone before us), within this term."""
        delay, term = 1.0, election.lock.epoch  # (see ``JobRunner.term``)
        while election.lock.epoch == term and not await self._run_task(task, election):
            await asyncio.sleep(delay)
            delay = min(delay * 2, STARTUP_RETRY_SECONDS)

    async def _run_task(self, task: StartupTask, election: Election) -> bool:
        ledger = election.lock.run_ledger()
        try:
            claim = await ledger.claim(task.ledger_job, task.version) if election.is_primary else "fenced"
        except LockError as exc:
            logger.error("Start-up task %s cannot be claimed, will retry: %s", task.key, exc)
            return False
        if claim == "done":
            self._done_tasks.add(task.key)
            return True
        if claim == "fenced":
            return False  # not the primary any more: the election cancels this service
        logger.info("Start-up task %s starts (pid=%d)", task.key, os.getpid())
        run = StartupRun(task.name, task.version, task.key, self.settings, election)
        work = task.function(run)
        if not await self.attempt(ledger, task.ledger_job, task.version, task.key, work, task.timeout):
            await _give_back(ledger, task.ledger_job, task.version)
            return False
        await mark_done(election, task.ledger_job, task.version)
        self._done_tasks.add(task.key)
        logger.info("Start-up task %s done (pid=%d)", task.key, os.getpid())
        return True

    async def attempt(
        self, ledger: RunLedger, job: str, period: str, key: str, work: Awaitable[None], timeout: float | None
    ) -> bool:
        """Run one attempt of ``job`` for ``period``; on failure log it, note it in the run ledger
        (as a done run of ``failed:<job>``) and return False."""
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await work
            count_job_run(job, "done")
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                error = f"took longer than its timeout of {timeout:g} s"
                logger.warning("Run %s failed, will retry: %s", key, error)
                count_job_run(job, "timeout")
            else:
                error = f"{type(exc).__name__}: {exc}"
                logger.warning("Run %s failed, will retry: %s", key, error, exc_info=True)
                count_job_run(job, "failed")
        self.last_errors[job] = error
        try:
            if await ledger.claim(f"{FAILED_JOB_PREFIX}{job}", period) == "claimed":
                await ledger.finish(f"{FAILED_JOB_PREFIX}{job}", period)
        except LockError:
            pass  # a note for humans only: never worth failing over
        return False

    # -- what every worker reports ----------------------------------------------------------------

    async def pending(self, ledger: RunLedger) -> list[str]:
        """The start-up tasks of this version that are not done yet (``GET /health/ready``).

        Read from the shared ledger, so a standby knows as well as the primary. Once done, a task
        stays done for this worker: it never asks again.
        """
        return await self._cached("pending", lambda: self._read_pending(ledger))

    async def _read_pending(self, ledger: RunLedger) -> list[str]:
        pending = []
        for task in self.startup:
            if task.key not in self._done_tasks:
                if await ledger.is_done(task.ledger_job, task.version):
                    self._done_tasks.add(task.key)
                else:
                    pending.append(task.key)
        return pending

    async def failing(self, ledger: RunLedger) -> dict[str, str | None]:
        """The start-up tasks of this version that are not done and have failed at least once, each
        with its last error if this worker saw it (the primary did; its log has the traceback)."""
        return await self._cached("failing", lambda: self._read_failing(ledger))

    async def _read_failing(self, ledger: RunLedger) -> dict[str, str | None]:
        failing: dict[str, str | None] = {}
        for task in self.startup:
            failed = f"{FAILED_JOB_PREFIX}{task.ledger_job}"
            if task.key not in self._done_tasks and await ledger.is_done(failed, task.version):
                failing[task.key] = self.last_errors.get(task.ledger_job)
        return failing

    async def describe(self, ledger: RunLedger) -> list[dict[str, Any]]:
        """Each job as ``/health/worker`` and the status command show it."""
        return await self._cached("describe", lambda: self._read_descriptions(ledger))

    async def _read_descriptions(self, ledger: RunLedger) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        described: list[dict[str, Any]] = []
        for task in self.startup:
            entry: dict[str, Any] = {"name": task.name, "kind": "startup", "version": task.version}
            done = task.key in self._done_tasks or await ledger.is_done(task.ledger_job, task.version)
            entry["done"] = done
            entry["last_failure"] = await self._last_failure(ledger, task.ledger_job)
            described.append(entry)
        for job in self.scheduled:
            schedule = job.schedule
            last_done = parse_period(await ledger.last_done(job.name))
            next_due = schedule.next_fire_time(now)
            described.append(
                {
                    "name": job.name,
                    "kind": "scheduled",
                    "schedule": schedule.cron,
                    "timezone": schedule.timezone,
                    "catch_up": schedule.catch_up,
                    "catch_up_seconds": schedule.catch_up_seconds,
                    "last_done": last_done.isoformat() if last_done else None,
                    "next_due": next_due.isoformat() if next_due else None,
                    "last_failure": await self._last_failure(ledger, job.name),
                }
            )
        return described

    async def _last_failure(self, ledger: RunLedger, job: str) -> dict[str, str | None] | None:
        """The last failed run of ``job`` (``run``: its key), with the error if this worker saw it."""
        period = await ledger.last_done(f"{FAILED_JOB_PREFIX}{job}")
        if period is None:
            return None
        return {"run": f"{job}:{period}", "error": self.last_errors.get(job)}

    async def _cached(self, what: str, read: Callable[[], Awaitable[V]]) -> V:
        async with self._reading:
            read_at, value = self._cache.get(what, (-STATUS_CACHE_SECONDS, None))
            if time.monotonic() - read_at >= STATUS_CACHE_SECONDS:
                value = await read()  # a LockError propagates: the caller says the ledger is unreadable
                self._cache[what] = (time.monotonic(), value)
            return cast(V, value)


class JobRunner:
    """Runs one scheduled job on the primary: each due period once, one at a time."""

    def __init__(self, job: ScheduledJob, election: Election, jobs: Jobs) -> None:
        self.job = job
        self.election = election
        self.jobs = jobs
        self.promoted_at = election.primary_since or datetime.now(UTC)
        self.term = election.lock.epoch
        """The epoch of the promotion this runner belongs to. A runner that outlived its term (a
        job that ignored its cancellation at a demotion) must never run again: after a later
        promotion of the same worker the run ledger's fence would let it through, as it fences
        by lock, and that promotion starts a runner of its own."""

    def in_term(self) -> bool:
        return self.election.is_primary and self.election.lock.epoch == self.term

    async def loop(self) -> None:
        """Run what is due now (the catch-up after a promotion), then at every fire time."""
        schedule = self.job.schedule
        while self.election.lock.epoch == self.term:  # (see ``term``)
            checked_at = datetime.now(UTC)
            try:
                await self.run_due(checked_at)
            except LockError as exc:  # the run ledger cannot be used: the message says why
                logger.error("Job %s cannot run, will retry at its next firing: %s", self.job.name, exc)
            except Exception as exc:  # e.g. the lock backend blinked: the next firing retries
                logger.warning("Job %s could not run, will retry at its next firing: %s", self.job.name, exc)
            fire = schedule.next_fire_time(checked_at)  # a period that came due meanwhile: at once
            if fire is None:
                return  # the schedule has ended (a cron expression for one year)
            while (delay := (fire - datetime.now(UTC)).total_seconds()) > 0:
                await asyncio.sleep(min(delay, MAX_SLEEP_SECONDS))

    async def run_due(self, now: datetime) -> None:
        """Run every due period that is not done yet, oldest first; stop at the first failure."""
        ledger = self.election.lock.run_ledger()
        name = self.job.name
        for period in await self.due_periods(now):
            stamp = period.strftime(PERIOD_FORMAT)
            key = f"{name}:{stamp}"
            if not self.in_term():
                return
            claim = await ledger.claim(name, stamp)
            if claim == "done":
                continue  # run already (by an earlier primary, or out of order)
            if claim == "fenced":
                logger.warning("Not running %s: this worker is not the primary any more", key)
                return
            run = Run(name, period, key, self.jobs.settings, self.election)
            work, timeout = self.job.function(run), self.job.schedule.timeout
            if not await self.jobs.attempt(ledger, name, stamp, key, work, timeout):
                await _give_back(ledger, name, stamp)
                return  # retried at the next firing, while inside the catch-up window
            await mark_done(self.election, name, stamp)
            logger.info("Job run %s done", key)

    async def due_periods(self, now: datetime) -> list[datetime]:
        """Periods up to ``now`` that may still need running, oldest first, by the catch-up policy.

        They start after the last period done, never earlier than the catch-up window. Without any
        period done they start with this primary, but never before the ledger was created: a ledger
        that was lost and created anew knows nothing of what ran before, and running it all again
        would be worse than a gap.
        """
        ledger = self.election.lock.run_ledger()
        schedule, name = self.job.schedule, self.job.name
        window = CURRENT_PERIOD_SECONDS + (schedule.catch_up_seconds if schedule.catch_up != "none" else 0)
        window_start = now - timedelta(seconds=window)
        last_done = parse_period(await ledger.last_done(name), name)
        if last_done is not None and last_done > now + timedelta(seconds=1):
            logger.error(
                "The run ledger says job %s ran for %s, which lies in the future (a clock that was "
                "ahead, or an edited ledger); ignoring it",
                name,
                last_done.isoformat(),
            )
            last_done = None
        if last_done is not None:
            first, floor = last_done + timedelta(microseconds=1), window_start
        else:
            first = self.promoted_at
            created = datetime.fromtimestamp(await ledger.created_at(), UTC)
            floor = max(window_start, created)
            unknown = schedule.fire_times(max(first, window_start), created)
            if unknown:
                count_missed_periods(name, len(unknown))
                logger.warning(
                    "Not running %d period(s) of job %s from %s to %s again: the run ledger was "
                    "created only at %s (it was lost), so nothing says whether they ran",
                    len(unknown),
                    name,
                    unknown[0].isoformat(),
                    unknown[-1].isoformat(),
                    created.isoformat(),
                )
        self._log_skipped(schedule.fire_times(first, window_start), "older than its catch-up window")
        # A period already done after `last_done` (run out of order) is refused by its claim.
        due = schedule.fire_times(min(max(first, floor), now), now, inclusive=True)
        if schedule.catch_up == "latest" and len(due) > 1:
            self._log_skipped(due[:-1], "catch_up='latest' runs only the newest")
            due = due[-1:]
        return due

    def _log_skipped(self, periods: list[datetime], why: str) -> None:
        if periods:
            count_missed_periods(self.job.name, len(periods))
            logger.warning(
                "Job %s: skipping %d period(s) from %s to %s: %s",
                self.job.name,
                len(periods),
                periods[0].isoformat(),
                periods[-1].isoformat(),
                why,
            )


async def mark_done(election: Election, job: str, period: str) -> None:
    """Mark a run done, retrying for a while: the work is done, and a ledger that is unreachable for
    a moment (a store restarting) must not turn it into a second run. Given up only when this worker
    stops being primary or the store stays unreachable; then a later primary runs it again, under
    the same key."""
    ledger = election.lock.run_ledger()
    delay = 0.1
    while True:
        try:
            await ledger.finish(job, period)
            return
        except LockError:
            if not election.is_primary or delay > FINISH_RETRY_SECONDS:
                raise
        await asyncio.sleep(delay)
        delay *= 2


async def _give_back(ledger: RunLedger, job: str, period: str) -> None:
    try:
        await ledger.abandon(job, period)
    except LockError as exc:  # the claim stays ours: the next attempt by this primary may redo it
        logger.warning("Could not give back the claim of %s:%s: %s", job, period, exc)


def parse_period(text: str | None, job: str = "") -> datetime | None:
    """A period as written in the ledger; None for none, or for one that is no period (edited?)."""
    if text is None:
        return None
    try:
        return datetime.strptime(text, PERIOD_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        if job:
            logger.error("The run ledger's last period of job %s, %r, is no period: ignored", job, text)
        return None
