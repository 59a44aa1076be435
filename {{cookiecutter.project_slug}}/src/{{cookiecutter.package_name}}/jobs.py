"""The singleton work of this service: the one place to declare it.

Every worker serves HTTP; only the primary runs what is declared here (see ``coordination/jobs.py``):

* ``@scheduled(cron, ...)``: exactly once per period of ``cron`` (5 crontab fields, or 6 with leading
  seconds), across crashes, reloads and failovers. The job receives ``run``: ``run.period`` is the
  period (an aware UTC datetime), ``run.key`` its stable id, to pass to external systems that can
  drop duplicates. Options: ``name`` (default: the function's name), ``timezone`` (``"UTC"``),
  ``catch_up`` (``"all"`` missed periods, ``"latest"`` only, or ``"none"``), ``catch_up_seconds``
  (3600: older missed periods are skipped), ``timeout`` (seconds; default none).
* ``@startup_task(version=...)``: once per release (default version: the package's ``__version__``),
  before ``GET /health/ready`` answers 200 on any worker and before any scheduled job runs. A
  primary that dies mid-task leaves it to the next one, which runs it again: make tasks idempotent
  or transactional.

A failed run is logged, given back and retried (a scheduled job at its next firing, a start-up task
after a growing delay). Decorated functions stay plain async functions: a test can call them.
"""

from __future__ import annotations
{% if cookiecutter.lock_backend == "postgres" %}
import asyncio
{%- endif %}
{%- if cookiecutter.lock_backend in ["file", "redis"] %}
import logging
import os
{%- endif %}

from .coordination import Run, StartupRun, scheduled, startup_task
{%- if cookiecutter.lock_backend == "postgres" %}
from .database import upgrade_database
{%- endif %}
from .notifications.reports import report_schedule, send_report
{%- if cookiecutter.lock_backend == "postgres" %}


@startup_task()
async def migrate_database(run: StartupRun) -> None:
    """``alembic upgrade head`` (``database.py``, revisions in ``migrations/versions/``): once per
    release, and every worker is not ready until it is done. Alembic blocks, so it runs in a thread;
    a primary deposed meanwhile cannot stop that thread, and the next primary's upgrade waits for it
    (``migrations/env.py``)."""
    await asyncio.to_thread(upgrade_database, run.settings)
{%- endif %}
{%- if cookiecutter.lock_backend in ["file", "redis"] %}

logger = logging.getLogger(__name__)


@startup_task()
async def prepare_storage(run: StartupRun) -> None:
    """Example start-up task, where a migration, seed data or a cache warm-up goes: it runs once per
    release, and every worker is not ready until it is done."""
    logger.info("Start-up task %s ran on the primary (pid=%d)", run.key, os.getpid())
{%- endif %}


@scheduled(report_schedule)  # REPORT_SCHEDULE and friends; left out while REPORT_RECIPIENTS is empty
async def report(run: Run) -> None:
    """The example report (``notifications/reports.py``), mailed once per period."""
    await send_report(run)


# Your own jobs, for example:
#
# @scheduled("0 3 * * *", timezone="Europe/Vienna", catch_up="latest")
# async def nightly_cleanup(run: Run) -> None:
#     await delete_expired_sessions(before=run.period)
