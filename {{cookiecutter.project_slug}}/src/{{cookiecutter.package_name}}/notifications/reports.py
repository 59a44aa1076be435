"""Scheduled reports: sent by the primary only, exactly once per period.

The report scheduler is a singleton service (see ``services.py``): it runs on the primary from
promotion to demotion. Each time the schedule fires, and once right after promotion, the primary
sends every period that is due and not yet done:

1. A *period* is one fire time of ``REPORT_SCHEDULE`` (say, 07:00 on 28 November); its run id is
   ``report:20261128T070000Z``.
2. Before sending, the primary claims the run id in the run ledger of the lock scope. Claims are
   fenced: a worker that is no longer primary cannot claim, and a period is claimed once per epoch.
3. Once the mail server has accepted the message, the period is marked done. If sending fails, the
   claim is given back and the period is retried at the next firing of the schedule.
4. Periods missed while there was no primary (crash, reload) or while the mail server was down are
   sent late if they are at most ``REPORT_CATCH_UP_SECONDS`` old; older ones are skipped with a log
   line. A service that has never sent a report starts with the first period after its promotion.

Each report's Message-ID is derived from its period. If a primary dies after the mail server took a
report but before recording it, the next primary sends it again, and it is the same message (same
Message-ID) to the mail system, which drops the duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from ..config import Settings, cron_trigger
from ..coordination import Election, LockError, SingletonService
from .mail import Mailer, new_message

logger = logging.getLogger(__name__)

SERVICE = "{{ cookiecutter.project_slug }}"
JOB = "report"
RECORD_RETRY_SECONDS = 10
"""How long a sent report's ledger entry is retried (doubling delays from 0.1 s) before giving up."""
PERIOD_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_PERIODS_PER_RUN = 1000
"""Bound on the periods looked at in one run (a 2-second schedule after a long outage)."""
CURRENT_PERIOD_SECONDS = 5.0
"""A period that came due at most this long ago is the current one, never a missed one, so even
REPORT_CATCH_UP_SECONDS=0 sends it (the run starts a moment after its period)."""


STARTED = time.monotonic()
"""When this worker process started, for the example report."""


def report_scheduler(settings: Settings) -> SingletonService:
    """The singleton service that sends the scheduled reports while this worker is primary."""

    async def run_report_scheduler(election: Election) -> None:
        reports = ReportSender(settings, election, Mailer(settings))
        due = asyncio.Event()

        async def fire() -> None:
            due.set()

        scheduler = AsyncIOScheduler(timezone=settings.report_timezone)
        scheduler.add_job(fire, reports.trigger, coalesce=True, misfire_grace_time=None)
        scheduler.start()
        due.set()  # catch up right after promotion
        try:
            while True:
                await due.wait()
                due.clear()
                try:
                    await reports.send_due()  # in this task: cancelled with it on demotion
                except LockError as exc:  # the run ledger cannot be used: the message says why
                    logger.error("Reports cannot be sent, will retry at the next run: %s", exc)
                except Exception as exc:  # e.g. the lock backend blinked: the next firing retries
                    logger.warning("Sending the due reports failed, will retry at the next run: %s", exc)
        finally:
            scheduler.shutdown(wait=False)

    return run_report_scheduler


class ReportSender:
    """Works out which periods are due and sends each one exactly once."""

    def __init__(self, settings: Settings, election: Election, mailer: Mailer) -> None:
        self.settings = settings
        self.election = election
        self.mailer = mailer
        self.trigger: CronTrigger = cron_trigger(settings.report_schedule, settings.report_timezone)
        self.promoted_at = datetime.now(UTC)

    async def send_due(self) -> None:
        ledger = self.election.lock.run_ledger()
        now = datetime.now(UTC)
        for period in await self.due_periods(now):
            key = period.strftime(PERIOD_FORMAT)
            run_id = f"{JOB}:{key}"
            if not self.election.is_primary:
                return
            claim = await ledger.claim(JOB, key)
            if claim == "done":
                continue  # sent already (by an earlier primary, or out of order)
            if claim == "fenced":
                logger.warning("Not sending report %s: this worker is not the primary any more", run_id)
                return
            try:
                await self.mailer.send(self.compose(period))
            except Exception as exc:
                await ledger.abandon(JOB, key)
                logger.warning("Report %s not sent, will retry at the next run: %s", run_id, exc)
                return  # the mail server is unlikely to take the next one either
            await self.record_sent(JOB, key)
            logger.info("Report %s sent to %s", run_id, ", ".join(self.settings.report_to))

    async def record_sent(self, job: str, period: str) -> None:
        """Mark a sent report done, retrying for a while: the mail is out, and a ledger that is
        unreachable for a moment (a store restarting) must not turn it into a resend. Given up
        only when this worker stops being primary or the store stays unreachable; then a later
        primary sends the period again, under the same Message-ID."""
        ledger = self.election.lock.run_ledger()
        delay = 0.1
        while True:
            try:
                await ledger.finish(job, period)
                return
            except LockError:
                if not self.election.is_primary or delay > RECORD_RETRY_SECONDS:
                    raise
            await asyncio.sleep(delay)
            delay *= 2

    async def due_periods(self, now: datetime) -> list[datetime]:
        """Periods up to ``now`` that may still need sending, oldest first.

        They start after the last period done, never earlier than ``REPORT_CATCH_UP_SECONDS`` ago
        (older ones are skipped with a WARNING). Without any period done they start with this
        primary, but never before the ledger was created: a ledger that was lost and created anew
        knows nothing of what was sent before, and sending it all again would be worse than a gap.
        """
        ledger = self.election.lock.run_ledger()
        catch_up = self.settings.report_catch_up_seconds + CURRENT_PERIOD_SECONDS
        window_start = now - timedelta(seconds=catch_up)
        latest = await ledger.last_done(JOB)
        last_done = None
        if latest is not None:
            try:
                last_done = datetime.strptime(latest, PERIOD_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                logger.error("The run ledger's last report period %r is no period (edited?): ignored", latest)
        if last_done is not None and last_done > now + timedelta(seconds=1):
            logger.error(
                "The run ledger says the report of %s was sent, which lies in the future (a clock "
                "that was ahead, or an edited ledger); ignoring it",
                last_done.isoformat(),
            )
            last_done = None
        if last_done is not None:
            first, floor = last_done + timedelta(microseconds=1), window_start
        else:
            first = self.promoted_at
            created = datetime.fromtimestamp(await ledger.created_at(), UTC)
            floor = max(window_start, created)
            unknown = self.fire_times(max(first, window_start), created)
            if unknown:
                logger.warning(
                    "Not sending %d report period(s) from %s to %s again: the run ledger was created "
                    "only at %s (it was lost), so nothing says whether they were sent",
                    len(unknown),
                    unknown[0].isoformat(),
                    unknown[-1].isoformat(),
                    created.isoformat(),
                )
        skipped = self.fire_times(first, window_start)
        if skipped:
            logger.warning(
                "Skipping %d report period(s) from %s to %s: older than REPORT_CATCH_UP_SECONDS",
                len(skipped),
                skipped[0].isoformat(),
                skipped[-1].isoformat(),
            )
        # A period already marked done after `latest` (sent out of order) is refused by its claim.
        return self.fire_times(min(max(first, floor), now), now, inclusive=True)

    def fire_times(self, start: datetime, end: datetime, *, inclusive: bool = False) -> list[datetime]:
        """The schedule's fire times from ``start`` to ``end``, in UTC and strictly increasing.

        The search steps on in UTC: stepping a local time across the end of summer time (when an
        hour repeats) would jump back an hour. A wall-clock time the repeated hour shows again is
        skipped, as cron does: "30 2 * * *" sends one report on that day, not two.
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

    def compose(self, period: datetime) -> EmailMessage:
        """The example report: replace the body with what your service should tell."""
        election = self.election
        uptime = timedelta(seconds=round(time.monotonic() - STARTED))
        body = "\n".join(
            [
                f"Report for {period.isoformat()} (schedule {self.settings.report_schedule!r}).",
                "",
                f"Sent by the primary worker: pid {os.getpid()} on {socket.gethostname()},",
                f"primary since {election.primary_since.isoformat() if election.primary_since else '-'}"
                f" (epoch {election.lock.epoch}).",
                f"This worker has been up for {uptime}.",
            ]
        )
        subject = f"[{SERVICE}] Report {period:%Y-%m-%d %H:%M:%S %Z}"
        message = new_message(self.settings, self.settings.report_to, subject, body)
        domain = self.settings.email_from.rpartition("@")[2] or "localhost"
        message["Message-ID"] = f"<{JOB}.{period.strftime(PERIOD_FORMAT)}.{SERVICE}@{domain}>"
        return message
