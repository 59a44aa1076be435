"""The run ledger and the catch-up rules, in one process with real locks of the chosen backend."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from {{ cookiecutter.package_name }}.coordination import Election, make_lock
from {{ cookiecutter.package_name }}.notifications.mail import Mailer
from {{ cookiecutter.package_name }}.notifications.reports import PERIOD_FORMAT, ReportSender

from conftest import settings_from
from support import run_scenario


def test_a_period_is_claimed_once_and_only_by_the_current_primary(lock_env: dict[str, str]) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        first, second = make_lock(settings), make_lock(settings)
        assert await first.try_acquire()
        ledger = first.run_ledger()
        assert await ledger.claim("report:20260101T070000Z")
        assert not await ledger.claim("report:20260101T070000Z")  # in progress under this epoch
        assert await ledger.claim("report:20260102T070000Z")
        await ledger.finish("report:20260102T070000Z")
        assert await ledger.latest_finished("report:") == "report:20260102T070000Z"

        await first.release()  # as if it died in mid-send of the 1 January report
        assert not await ledger.claim("report:20260103T070000Z")  # deposed: fenced out
        assert await second.try_acquire()
        successor = second.run_ledger()
        assert await successor.claim("report:20260101T070000Z")  # unfinished: the successor redoes it
        assert not await successor.claim("report:20260102T070000Z")  # done: never again
        await successor.abandon("report:20260101T070000Z")  # a failed send gives the claim back
        assert await successor.claim("report:20260101T070000Z")
        await first.close()
        await second.close()

    run_scenario(scenario)


def test_catch_up_sends_recent_missed_periods_and_skips_older_ones(
    lock_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_from(lock_env).model_copy(
        update={"report_schedule": "* * * * * *", "report_catch_up_seconds": 10.0}
    )

    async def scenario() -> None:
        election = Election(make_lock(settings))
        await election.start()
        now = datetime.now(UTC).replace(microsecond=0)
        ledger = election.lock.run_ledger()
        last_sent = f"report:{(now - timedelta(seconds=60)).strftime(PERIOD_FORMAT)}"
        assert await ledger.claim(last_sent)
        await ledger.finish(last_sent)

        due = await ReportSender(settings, election, Mailer(settings)).due_periods(now)

        assert due[0] == now - timedelta(seconds=10)  # the catch-up window, oldest first
        assert due[-1] == now and len(due) == 11
        await election.stop()

    with caplog.at_level(logging.WARNING):
        run_scenario(scenario)
    assert "Skipping 49 report period(s)" in caplog.text  # 59 missed, 10 of them still in the window
