"""The scheduled report: an example ``@scheduled`` job (declared in ``jobs.py``) that mails a report.

The job machinery (``coordination/jobs.py``) gives it what every scheduled job gets: it runs on the
primary only, once per period of ``REPORT_SCHEDULE``, periods missed while there was no primary or
while the mail server was down are sent late if at most ``REPORT_CATCH_UP_SECONDS`` old, and a
report the mail server refused is retried at the next firing. This module only says when the report
runs (``report_schedule``) and what it sends (``send_report``).

Each report's Message-ID is derived from its period (``run.key``). If a primary dies after the mail
server took a report but before recording it, the next primary sends it again, and it is the same
message (same Message-ID) to the mail system, which drops the duplicate.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta
from email.message import EmailMessage

from ..config import Settings
from ..coordination import Run, Schedule
from .mail import Mailer, new_message

logger = logging.getLogger(__name__)

SERVICE = "{{ cookiecutter.project_slug }}"
STARTED = time.monotonic()
"""When this worker process started, for the example report."""


def report_schedule(settings: Settings) -> Schedule | None:
    """The report follows the REPORT_* settings, and runs only when REPORT_RECIPIENTS is set."""
    if not settings.report_to:
        return None
    return Schedule(
        settings.report_schedule,
        timezone=settings.report_timezone,
        catch_up="all",
        catch_up_seconds=settings.report_catch_up_seconds,
    )


async def send_report(run: Run) -> None:
    """Send the report of ``run.period``; raises if the mail server does not take it (then it is retried)."""
    await Mailer(run.settings).send(compose(run))
    logger.info("Report %s sent to %s", run.key, ", ".join(run.settings.report_to))


def compose(run: Run) -> EmailMessage:
    """The example report: replace the body with what your service should tell."""
    settings, election, period = run.settings, run.election, run.period
    uptime = timedelta(seconds=round(time.monotonic() - STARTED))
    body = "\n".join(
        [
            f"Report for {period.isoformat()} (schedule {settings.report_schedule!r}).",
            "",
            f"Sent by the primary worker: pid {os.getpid()} on {socket.gethostname()},",
            f"primary since {election.primary_since.isoformat() if election.primary_since else '-'}"
            f" (epoch {election.lock.epoch}).",
            f"This worker has been up for {uptime}.",
        ]
    )
    subject = f"[{SERVICE}] Report {period:%Y-%m-%d %H:%M:%S %Z}"
    message = new_message(settings, settings.report_to, subject, body)
    domain = settings.email_from.rpartition("@")[2] or "localhost"
    # <report.20261128T070000Z.<project slug>@domain>: the same for every attempt at this period
    message["Message-ID"] = f"<{run.key.replace(':', '.')}.{SERVICE}@{domain}>"
    return message
