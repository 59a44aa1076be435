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
   Skipped periods are logged as a WARNING. A new job starts with the first period after the
   promotion of the first primary that runs it (noted in the ledger, so that a failed or cut-short
   first run is retried by the next primary like any other).
4. **Nothing stops for good.** Whatever a job or task raises (also ``SystemExit`` or a
   ``CancelledError`` of its own) is one failed attempt, retried; only a cancellation by the
   election (a demotion) ends a run.

A run that succeeded but whose "done" could not be written (the primary died in between) is run
again by the next primary, under the same ``run.key``: pass the key to external systems that can
drop duplicates (the report uses it for its Message-ID).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
STARTUP_FIRST_RETRY_SECONDS = 1.0
STARTUP_RETRY_SECONDS = 60.0
"""Bounds of the delay between attempts at a start-up task that keeps failing (it doubles)."""
STARTUP_RECHECK_SECONDS = 30.0
"""How often the primary checks that the start-up tasks are still done in the run ledger."""
MAX_SLEEP_SECONDS = 30.0
"""A job loop looks at the wall clock at least this often (the clock may be set while it sleeps)."""
STATUS_CACHE_SECONDS = 0.5
"""How long readiness and job status reuse what they read from the run ledger: a flood of probes
costs the lock backend at most one read per interval and worker."""
FAILED_JOB_PREFIX = "failed:"
"""A failed run of job ``x`` is noted as a done run of ``failed:x``, so that every worker and the
status command can tell the last failure from the shared ledger."""
SINCE_JOB_PREFIX = "since:"
"""Job ``x`` is noted as a done run of ``since:x`` for the period from which it runs, by the first
primary that runs it. Until ``x`` has a done run of its own, the next primary starts from there, so
a first run that failed or was cut short by a crash is retried like any other (never lost)."""
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


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``. The host's own zone ("localtime") is refused: two hosts of one
    service could disagree on it, and a job would then run at two different times."""
    if not isinstance(name, str) or name in ("", "localtime"):
        raise ValueError(f"timezone={name!r}: name an IANA time zone, e.g. 'Europe/Vienna' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"timezone={name!r} is no known time zone (an IANA name: 'Europe/Vienna')") from None


def check_timeout(timeout: float | None) -> None:
    """A run's timeout is None (none) or a positive, finite number of seconds."""
    if timeout is not None and not (_is_number(timeout) and 0 < timeout < math.inf):
        raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds, or None")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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

    zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zone", time_zone(self.timezone))
        try:
            trigger = cron_trigger(self.cron, self.timezone)
        except ValueError as exc:
            raise ValueError(f"schedule {self.cron!r} {exc}") from None
        if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:  # e.g. "0 0 30 2 *"
            raise ValueError(f"schedule {self.cron!r} never fires (no such date)")
        if self.catch_up not in get_args(CatchUp):
            raise ValueError(f"catch_up={self.catch_up!r}: must be 'all', 'latest' or 'none'")
        if not _is_number(self.catch_up_seconds) or not 0 <= self.catch_up_seconds <= 31 * 86400:
            raise ValueError(f"catch_up_seconds={self.catch_up_seconds!r}: must be 0 to 2678400 (31 days)")
        check_timeout(self.timeout)
        object.__setattr__(self, "trigger", trigger)

    def fire_times(self, start: datetime, end: datetime, *, inclusive: bool = False) -> list[datetime]:
        """The fire times from ``start`` to ``end``, in UTC and strictly increasing.

        The search steps on in UTC: stepping a local time across the end of summer time (when an
        hour repeats) would jump back an hour. A wall-clock time the repeated hour shows again is
        skipped, as cron does: "30 2 * * *" runs once on that day, not twice. At most
        ``MAX_PERIODS_PER_RUN`` times, the oldest.
        """
        times: list[datetime] = []
        fire = self._next(start)
        while fire is not None and (fire <= end if inclusive else fire < end):
            times.append(fire)
            if len(times) >= MAX_PERIODS_PER_RUN:
                break
            fire = self._next(fire + timedelta(microseconds=1))
        return times

    def next_fire_time(self, after: datetime) -> datetime | None:
        """The first fire time strictly after ``after``, in UTC (None if the schedule has ended)."""
        return self._next(after + timedelta(microseconds=1))

    def newest_fire_time(self, start: datetime, end: datetime) -> datetime | None:
        """The last fire time from ``start`` to ``end`` (inclusive), however many lie between: the
        search starts a second before ``end`` and reaches back twice as far each time."""
        span = timedelta(seconds=1)
        while True:
            search_from = max(start, end - span)
            times = self.fire_times(search_from, end, inclusive=True)
            while len(times) == MAX_PERIODS_PER_RUN:  # capped: look on from the last one found
                after = times[-1] + timedelta(microseconds=1)
                times = self.fire_times(after, end, inclusive=True) or times[-1:]
            if times or search_from == start:
                return times[-1] if times else None
            span *= 2

    def _next(self, start: datetime) -> datetime | None:
        """The first fire time from ``start`` on, in UTC, leaving out the wall-clock times that the
        hour repeated at the end of summer time shows again (marked ``fold=1``). Decided for each
        time on its own, so that no call, whatever its ``start``, returns a repeated one."""
        fire = self.trigger.get_next_fire_time(None, start)
        while fire is not None and fire.fold == 1 and fire.replace(fold=0).utcoffset() != fire.utcoffset():
            fire = self.trigger.get_next_fire_time(fire, fire.astimezone(UTC) + timedelta(microseconds=1))
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

    def __post_init__(self) -> None:
        check_timeout(self.timeout)

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
        _check_async(function, job)
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
        _check_async(function, task)
        release = __version__ if version is None else str(version)
        if not release.strip():
            raise ValueError(f"start-up task {task}: version={version!r} is empty (omit it instead)")
        _startup[task] = StartupTask(task, function, release, timeout)
        return function

    return declare


def _check_async(function: Callable[..., Any], name: str) -> None:
    """A plain ``def`` would run inside the event loop, blocking every request, and its result could
    not be awaited: refused at import, not found out at every firing."""
    if not (inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__)):
        raise ValueError(f"job {name!r} must be an async function (async def), not a plain def")


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
        self.running: dict[str, datetime] = {}
        """The runs in progress on this worker (by run key), and since when."""
        self._cache: dict[str, tuple[float, Any]] = {}
        self._reading: dict[str, asyncio.Lock] = {}
        """One lock per kind of reading: readiness never waits behind a slow job status."""

    async def run_on_primary(self, election: Election) -> None:
        """The singleton service: start-up tasks first, then every scheduled job until demoted.

        Nothing a job or task does ends it while the worker is primary: each failure is logged and
        retried (see ``attempt``), so that one bad run never stops the others for good.
        """
        logger.info(
            "Singleton jobs start on the primary (pid=%d, epoch=%d)", os.getpid(), election.lock.epoch
        )
        for task in self.startup:
            await self._complete(task, election)
        async with asyncio.TaskGroup() as group:  # one loop per job: jobs run side by side
            if self.startup:
                group.create_task(self._keep_startup_done(election), name="start-up tasks")
            for job in self.scheduled:
                group.create_task(JobRunner(job, election, self).loop(), name=f"job {job.name}")

    async def _complete(self, task: StartupTask, election: Election) -> None:
        """Run a start-up task until it is done (by us or anyone before us), within this term.
        Whatever goes wrong, the task or the ledger, is logged and retried with a growing delay."""
        delay, term = STARTUP_FIRST_RETRY_SECONDS, election.lock.epoch  # (see ``JobRunner.term``)
        while election.lock.epoch == term and not _cancelling():
            try:
                if await self._run_task(task, election, term):
                    return
            except LockError as exc:  # its "done" could not be written: the task runs again
                logger.error("Start-up task %s could not be marked done, will retry: %s", task.key, exc)
            except Exception:
                logger.exception("Start-up task %s: unexpected error, will retry", task.key)
            await asyncio.sleep(delay)
            delay = min(delay * 2, STARTUP_RETRY_SECONDS)

    async def _keep_startup_done(self, election: Election) -> None:
        """Run a start-up task again if the ledger stops saying it is done (the ledger was lost:
        deleted, or a Redis that lost its data), so that no worker stays not ready until the next
        failover. Looked at every ``STARTUP_RECHECK_SECONDS``."""
        term = election.lock.epoch
        while election.lock.epoch == term and not _cancelling():
            await asyncio.sleep(STARTUP_RECHECK_SECONDS)
            for task in self.startup:
                try:
                    done = await election.lock.run_ledger().is_done(task.ledger_job, task.version)
                except LockError:
                    continue  # the ledger cannot be read now: the job loops say so; look again later
                if not done and election.is_primary:
                    logger.warning(
                        "Start-up task %s was done, but the run ledger does not say so any more (it was "
                        "lost or emptied): running it again",
                        task.key,
                    )
                    self._done_tasks.discard(task.key)
                    await self._complete(task, election)

    async def _run_task(self, task: StartupTask, election: Election, term: int) -> bool:
        ledger = election.lock.run_ledger()
        try:
            claim = await ledger.claim(task.ledger_job, task.version) if election.is_primary else "fenced"
        except LockError as exc:
            logger.error("Start-up task %s cannot be claimed, will retry: %s", task.key, exc)
            return False
        if claim == "done":
            self._done_tasks.add(task.key)
            return True
        if claim == "fenced" or not (election.is_primary and election.lock.epoch == term):
            # Not the primary any more (maybe the lease ran out while the claim was on its way, in a
            # paused process): the election cancels this service, the next primary takes the claim over.
            return False
        logger.info("Start-up task %s starts (pid=%d)", task.key, os.getpid())
        run = StartupRun(task.name, task.version, task.key, self.settings, election)
        start = partial(task.function, run)
        if not await self.attempt(election, task.ledger_job, task.version, task.key, start, task.timeout):
            await _give_back(ledger, task.ledger_job, task.version)
            return False
        await mark_done(election, task.ledger_job, task.version)
        self._done_tasks.add(task.key)
        logger.info("Start-up task %s done (pid=%d)", task.key, os.getpid())
        return True

    async def attempt(
        self,
        election: Election,
        job: str,
        period: str,
        key: str,
        start: Callable[[], Awaitable[None]],
        timeout: float | None,
    ) -> bool:
        """Run one attempt of ``job`` for ``period``; on failure log it, note it in the run ledger
        (as a done run of ``failed:<job>``) and return False.

        Anything the job raises is a failure of that run, retried later: also ``SystemExit`` (it
        would end the worker) and a ``CancelledError`` that the job raised itself (a library that
        cancels internally). Only a cancellation of this task, by the election, ends the attempt.
        """
        deadline = asyncio.timeout(timeout)
        self.running[key] = datetime.now(UTC)
        try:
            async with deadline:
                await start()
        except asyncio.CancelledError:
            if _cancelling():  # ours: this worker is demoted or stops
                logger.warning("Run %s stopped unfinished: this worker is no longer primary, or stops", key)
                raise
            error = "CancelledError: the run was cancelled from within, not by the service"
            logger.warning("Run %s failed, will retry: %s", key, error, exc_info=True)
            count_job_run(job, "failed")
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            if isinstance(exc, TimeoutError) and deadline.expired():
                error = f"took longer than its timeout of {timeout:g} s"
                logger.warning("Run %s failed, will retry: %s", key, error)
                count_job_run(job, "timeout")
            else:
                error = f"{type(exc).__name__}: {exc}"
                logger.warning("Run %s failed, will retry: %s", key, error, exc_info=True)
                count_job_run(job, "failed")
        else:
            count_job_run(job, "done")
            if not election.is_primary:  # e.g. it blocked the event loop, so the lease was not renewed
                logger.error(
                    "Run %s ended after this worker had stopped being primary (it ran %.1f s); another "
                    "primary may run it as well. A job that blocks the event loop (time.sleep, long CPU "
                    "work) keeps the lock from being renewed: await, or use asyncio.to_thread",
                    key,
                    (datetime.now(UTC) - self.running[key]).total_seconds(),
                )
            return True
        finally:
            self.running.pop(key, None)
        self.last_errors[job] = error
        try:
            ledger = election.lock.run_ledger()
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
            entry["running_since"] = self._running_since(task.key)
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
                    "running_since": self._running_since(f"{job.name}:"),
                }
            )
        return described

    def _running_since(self, key_prefix: str) -> str | None:
        """When the run in progress on this worker (the primary) started, if any: a run that hangs
        (no timeout) shows here."""
        started = [since for key, since in self.running.items() if key.startswith(key_prefix)]
        return min(started).isoformat(timespec="seconds") if started else None

    async def _last_failure(self, ledger: RunLedger, job: str) -> dict[str, str | None] | None:
        """The last failed run of ``job`` (``run``: its key), with the error if this worker saw it."""
        period = await ledger.last_done(f"{FAILED_JOB_PREFIX}{job}")
        if period is None:
            return None
        return {"run": f"{job}:{period}", "error": self.last_errors.get(job)}

    async def _cached(self, what: str, read: Callable[[], Awaitable[V]]) -> V:
        async with self._reading.setdefault(what, asyncio.Lock()):
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
        self._since_noted = False
        self._reported: set[str] = set()
        """The ledger's oddities (a time in the future) already logged by this runner: once is enough."""

    def in_term(self) -> bool:
        return self.election.is_primary and self.election.lock.epoch == self.term

    async def loop(self) -> None:
        """Run what is due now (the catch-up after a promotion), then at every fire time."""
        schedule, name = self.job.schedule, self.job.name
        # Stops with its term, and as soon as this task is being cancelled, even if a job swallowed
        # the cancellation (asyncio.wait_for in Python 3.11 may: gh-86296).
        while self.election.lock.epoch == self.term and not _cancelling():  # (see ``term``)
            checked_at = datetime.now(UTC)
            try:
                await self.run_due(checked_at)
            except LockError as exc:  # the run ledger cannot be used: the message says why
                logger.error("Job %s cannot run, will retry at its next firing: %s", name, exc)
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                logger.warning("Job %s was cancelled from within; will retry at its next firing", name)
            except Exception as exc:  # e.g. the lock backend blinked: the next firing retries
                logger.warning("Job %s could not run, will retry at its next firing: %s", name, exc)
            fire = schedule.next_fire_time(checked_at)  # a period that came due meanwhile: at once
            if fire is None:
                return  # the schedule has ended (a cron expression for one year)
            while (delay := (fire - datetime.now(UTC)).total_seconds()) > 0:
                await asyncio.sleep(min(delay, MAX_SLEEP_SECONDS))

    async def run_due(self, now: datetime) -> None:
        """Run every due period that is not done yet, oldest first; stop at the first failure."""
        ledger = self.election.lock.run_ledger()
        name = self.job.name
        if not self._since_noted and self.in_term():
            await self._note_since()
        for period in await self.due_periods(now):
            stamp = period.strftime(PERIOD_FORMAT)
            key = f"{name}:{stamp}"
            if not self.in_term():
                return
            claim = await ledger.claim(name, stamp)
            if claim == "done":
                continue  # run already (by an earlier primary, or out of order)
            if claim == "fenced" or not self.in_term():
                # Not the primary any more; maybe the lease ran out while the claim was on its way
                # (a paused process). The next primary takes the claim over, as a dead holder's.
                logger.warning("Not running %s: this worker is not the primary any more", key)
                return
            start = partial(self.job.function, Run(name, period, key, self.jobs.settings, self.election))
            if not await self.jobs.attempt(self.election, name, stamp, key, start, self.job.schedule.timeout):
                await _give_back(ledger, name, stamp)
                return  # retried at the next firing, while inside the catch-up window
            await mark_done(self.election, name, stamp)
            logger.info("Job run %s done", key)

    async def _note_since(self) -> None:
        """Note the period this job runs from, before its first claim (see ``SINCE_JOB_PREFIX``)."""
        ledger, since = self.election.lock.run_ledger(), f"{SINCE_JOB_PREFIX}{self.job.name}"
        if await ledger.last_done(self.job.name) is None and await ledger.last_done(since) is None:
            stamp = self.promoted_at.strftime(PERIOD_FORMAT)
            if await ledger.claim(since, stamp) == "claimed":
                await ledger.finish(since, stamp)
        self._since_noted = True

    async def due_periods(self, now: datetime) -> list[datetime]:
        """Periods up to ``now`` that may still need running, oldest first, by the catch-up policy.

        They start after the last period done, never earlier than the catch-up window. Without any
        period done they start where the job was first run (by this primary or an earlier one, see
        ``SINCE_JOB_PREFIX``), but never before the ledger was created: a ledger that was lost and
        created anew knows nothing of what ran before, and running it all again would be worse
        than a gap. Times in the ledger that lie in the future (a clock that was ahead, or was set
        back since) are ignored with an ERROR: they would stop the job until then.
        """
        ledger = self.election.lock.run_ledger()
        schedule, name = self.job.schedule, self.job.name
        window = CURRENT_PERIOD_SECONDS + (schedule.catch_up_seconds if schedule.catch_up != "none" else 0)
        window_start = now - timedelta(seconds=window)
        last_done = self._not_ahead(parse_period(await ledger.last_done(name), name), now, "last run")
        if last_done is not None:
            first, floor = last_done + timedelta(microseconds=1), window_start
        else:
            since = parse_period(await ledger.last_done(f"{SINCE_JOB_PREFIX}{name}"))
            first = min(self.promoted_at, self._not_ahead(since, now, "first run") or self.promoted_at)
            created = await self._ledger_created(now)
            floor = max(window_start, created or window_start)
            unknown = schedule.fire_times(max(first, window_start), created) if created else []
            if unknown:
                count_missed_periods(name, len(unknown))
                logger.warning(
                    "Not running %d period(s) of job %s from %s to %s again: the run ledger was "
                    "created only at %s (it was lost), so nothing says whether they ran",
                    len(unknown),
                    name,
                    unknown[0].isoformat(),
                    unknown[-1].isoformat(),
                    created.isoformat() if created else None,
                )
        self._log_skipped(schedule.fire_times(first, window_start), "older than its catch-up window")
        # A period already done after `last_done` (run out of order) is refused by its claim.
        start = min(max(first, floor), now)
        if schedule.catch_up != "latest":
            return schedule.fire_times(start, now, inclusive=True)
        # Found from the end, not from the start: there may be more than MAX_PERIODS_PER_RUN.
        newest = schedule.newest_fire_time(start, now)
        if newest is None:
            return []
        self._log_skipped(schedule.fire_times(start, newest), "catch_up='latest' runs only the newest")
        return [newest]

    def _not_ahead(self, when: datetime | None, now: datetime, what: str) -> datetime | None:
        """``when``, unless it lies in the future: then None, with an ERROR (once per runner)."""
        if when is None or when <= now + timedelta(seconds=1):
            return when
        if what not in self._reported:
            self._reported.add(what)
            logger.error(
                "The run ledger's %s of job %s, %s, lies in the future (a clock that was ahead or was "
                "set back, or an edited ledger); ignoring it",
                what,
                self.job.name,
                when.isoformat(),
            )
        return None

    async def _ledger_created(self, now: datetime) -> datetime | None:
        """When the run ledger was created; None if that is unreadable or in the future (then the
        periods since this job's first run are not held back: their claims still refuse any done)."""
        try:
            created = datetime.fromtimestamp(await self.election.lock.run_ledger().created_at(), UTC)
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            if "created" not in self._reported:
                self._reported.add("created")
                logger.error("The run ledger's creation time cannot be read (%s); ignoring it", exc)
            return None
        return self._not_ahead(created, now, "creation time (not a run)")

    def _log_skipped(self, periods: list[datetime], why: str) -> None:
        if periods:
            count_missed_periods(self.job.name, len(periods))
            logger.warning(
                "Job %s: skipping %d%s period(s) from %s to %s: %s",
                self.job.name,
                len(periods),
                " or more" if len(periods) >= MAX_PERIODS_PER_RUN else "",  # the search stops there
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


def _cancelling() -> bool:
    """Whether the running task is being cancelled (by the election), as opposed to a job that
    raised ``CancelledError`` itself."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
