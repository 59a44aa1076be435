"""E-mail against a real SMTP server (aiosmtpd): one report per period from the primary, across a
crash and an outage of the mail server; one alert digest per worker and window."""

from __future__ import annotations

import logging
import os
import re
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable
from email.message import Message
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from pydantic import SecretStr

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.notifications.alerts import AlertDigest
from {{ cookiecutter.package_name }}.notifications.mail import Mailer, new_message

from conftest import Server, status_output
from mail_sink import MailSink, assert_each_period_once_without_gaps, mail_env, period_of
from support import free_port, run_scenario, self_signed_certificate, wait_until


def test_four_workers_send_exactly_one_report_per_period(
    start_server: Callable[..., Server], lock_env: dict[str, str], smtp_sink: MailSink
) -> None:
    server = start_server("uvicorn", workers=4, env=mail_env(smtp_sink))

    wait_until(lambda: len(set(smtp_sink.periods())) >= 8, "8 report periods (16 s)", 60)
    server.stop()

    assert_each_period_once_without_gaps(smtp_sink.periods())
    message = smtp_sink.received("<report.")[0]
    assert message["To"] == "ops@example.com" and "Report" in str(message["Subject"])
    # The status command lists the report job, as the run ledger knows it.
    last = max(smtp_sink.periods()).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    status = status_output(lock_env, **mail_env(smtp_sink))
    schedule = "schedule '*/2 * * * * *' (UTC, catch-up all within 3600 s)"
    assert f"job report: {schedule}; last done: {last};" in status
    assert re.search(r"start-up task \w+: version 0\.1\.0 done; last failure: none", status), status


def test_a_crash_of_the_primary_neither_duplicates_nor_loses_a_period(
    start_server: Callable[..., Server], smtp_sink: MailSink
) -> None:
    server = start_server("uvicorn", workers=4, env=mail_env(smtp_sink))
    wait_until(lambda: len(set(smtp_sink.periods())) >= 3, "3 report periods", 60)
    primary = server.wait_for_primary()
    # Strike between two sends. Killed in the millisecond after the mail server took a report and
    # before the ledger recorded it, the successor would send that report again: the same message
    # (same Message-ID), which is the documented at-least-once edge, not what this test is about.
    wait_until(lambda: time.monotonic() - smtp_sink.last_delivery > 0.5, "a moment between two sends")

    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)
    sent_before = len(set(smtp_sink.periods()))

    # The successor sends what was missed while nobody was primary, then carries on.
    wait_until(lambda: len(set(smtp_sink.periods())) >= sent_before + 5, "5 more periods", 60)
    server.stop()
    assert_each_period_once_without_gaps(smtp_sink.periods())


def test_a_crash_after_the_mail_server_took_a_report_resends_it_with_the_same_message_id(
    start_server: Callable[..., Server], smtp_sink: MailSink
) -> None:
    server = start_server("uvicorn", workers=4, env=mail_env(smtp_sink))
    wait_until(lambda: len(set(smtp_sink.periods())) >= 2, "2 report periods", 60)
    primary = server.wait_for_primary()
    killed: list[Message] = []

    def kill_the_sender(message: Message) -> None:
        # The message is in the mail system, but the primary dies before it hears "250" and can
        # mark the period done in the ledger: the at-least-once edge of any mail sender.
        if not killed:
            killed.append(message)
            server.note_killed(primary)
            os.kill(primary, signal.SIGKILL)

    smtp_sink.before_accepting = kill_the_sender
    wait_until(lambda: len(set(smtp_sink.periods())) >= len(killed) + 6, "the successor's reports", 60)
    server.stop()

    (lost_ack,) = killed
    message_ids = [str(message["Message-ID"]) for message in smtp_sink.received("<report.")]
    assert message_ids.count(str(lost_ack["Message-ID"])) == 2  # sent again, as the same message
    resent = period_of(str(lost_ack["Message-ID"]))
    periods = smtp_sink.periods()
    periods.remove(resent)  # the one resend
    assert_each_period_once_without_gaps(periods)


def test_reports_missed_while_the_mail_server_is_down_are_sent_when_it_is_back(
    start_server: Callable[..., Server],
) -> None:
    sink = MailSink()  # not started yet: nothing listens on its port
    server = start_server("uvicorn", workers=2, env=mail_env(sink))
    missed = period_of(server.wait_for_log(r"WARNING .*Run report:\S+ failed, will retry"))
    assert server.get("/health").status_code == 200  # the service keeps serving

    def failure_shown() -> bool:  # by any worker: the failure is noted in the shared ledger
        jobs = server.get("/health/worker").json()["jobs"]
        report = next(job for job in jobs if job["name"] == "report")
        return bool(report["last_failure"] and report["last_failure"]["run"].startswith("report:"))

    wait_until(failure_shown, "/health/worker to show the report's last failure")

    sink.start()
    try:
        wait_until(lambda: len(set(sink.periods())) >= 4, "the missed and the new reports", 60)
        server.stop()
    finally:
        sink.stop()
    assert_each_period_once_without_gaps(sink.periods())
    assert missed in sink.periods()  # the period that failed during the outage was sent later


def test_console_backend_writes_reports_to_the_log(start_server: Callable[..., Server]) -> None:
    env = {"REPORT_SCHEDULE": "* * * * * *", "REPORT_RECIPIENTS": "ops@example.com"}
    server = start_server("uvicorn", workers=2, env=env)

    server.wait_for_log(r"E-mail \(console backend, not sent\)")
    server.wait_for_log(r"Message-ID: <report\.\d{8}T\d{6}Z\.")


def digests(sink: MailSink) -> list[tuple[int, int, str, float]]:
    """(pid, number of records, role, arrival time) of every alert digest received."""
    found = []
    with sink._lock:
        delivered = list(zip(sink.messages, sink.arrivals, strict=True))
    for message, arrived in delivered:
        subject = str(message["Subject"])
        match = re.search(r"\] (\d+) error\(s\) on .* \(pid (\d+), (primary|standby)\)", subject)
        if match:
            found.append((int(match[2]), int(match[1]), match[3], arrived))
    return found


def test_errors_of_several_workers_become_one_collapsed_digest_per_worker_and_window(
    start_server: Callable[..., Server], smtp_sink: MailSink
) -> None:
    env = {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        "ALERT_RECIPIENTS": "oncall@example.com",
        "ALERT_DIGEST_SECONDS": "2",
    }
    server = start_server("uvicorn", workers=4, env=env, app="apps:noisy_app", extra=("--factory",))
    primary = server.wait_for_primary()
    logged: Counter[int] = Counter()  # records logged by each worker
    deadline = time.monotonic() + 7  # three and a half windows
    while time.monotonic() < deadline:
        answer = server.get("/errors?count=10").json()  # a new connection each: spread over workers
        logged[answer["pid"]] += answer["logged"]
        time.sleep(0.02)

    wait_until(lambda: sum(found[1] for found in digests(smtp_sink)) >= sum(logged.values()) - 40, "digests")
    periodic = digests(smtp_sink)  # before the shutdown, which mails each worker's last window at once
    server.stop()
    found = digests(smtp_sink)

    assert len(logged) >= 2, f"the requests reached only {set(logged)}"
    for pid, count in logged.items():  # every record counted once, in the digests of its own worker
        assert sum(records for sender, records, _, _ in found if sender == pid) == count, pid
    # At most one digest per worker and window (2 s; a little jitter allowed). A worker the kernel
    # handed requests in one window only mails once: the spacing is checked wherever there is one.
    mailed = {pid: sorted(arrived for sender, _, _, arrived in periodic if sender == pid) for pid in logged}
    assert max(map(len, mailed.values())) >= 2, f"no worker mailed twice in three windows: {mailed}"
    for pid, times in mailed.items():
        assert all(later - earlier > 1.6 for earlier, later in pairwise(times)), (pid, times)
    # The role in a subject is the worker's when it mailed: the digests at the shutdown go out after
    # the lock was released (the primary's last one says standby), so only the earlier ones count.
    for pid, _, role, _ in periodic:
        assert role == ("primary" if pid == primary else "standby")
    for message in smtp_sink.received():
        body = str(message.get_payload())
        total = int(re.search(r"\] (\d+) error\(s\)", str(message["Subject"]))[1])  # type: ignore[index]
        lines = re.findall(r"^ *(\d+) x ERROR \S+: Simulated failure number (\d)\r?$", body, re.MULTILINE)
        assert sorted(number for _, number in lines) == sorted({number for _, number in lines}), body
        assert sum(int(count) for count, _ in lines) == total, body  # collapsed, and counted exactly


def test_the_hourly_cap_holds_digests_back_and_the_next_one_says_how_many(smtp_sink: MailSink) -> None:
    settings = Settings(
        email_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_sink.port,
        alert_recipients="oncall@example.com",
        alert_max_per_hour=2,
        _env_file=None,
    )
    now = [1000.0]  # the handler's clock, moved by the test: an hour is too long to wait
    digest = AlertDigest(settings, lambda: "standby", clock=lambda: now[0])
    logger = logging.getLogger("tests.alerts")
    logger.addHandler(digest)

    async def scenario() -> None:
        for window in range(4):  # four windows of three records each: the cap mails two of them
            for _ in range(3):
                logger.error("Failure in window %d", window)
            await digest.send_digest()
            now[0] += 60
        assert len(smtp_sink.received()) == 2
        now[0] += 3600  # an hour later the cap allows digests again
        logger.error("Failure an hour later")
        await digest.send_digest()

    try:
        run_scenario(scenario)
    finally:
        logger.removeHandler(digest)
    mails = smtp_sink.received()
    assert len(mails) == 3
    last = str(mails[-1].get_payload())
    assert "1 x ERROR tests.alerts: Failure an hour later" in last
    assert "6 more record(s) were not mailed: ALERT_MAX_PER_HOUR was reached." in last


def test_alerts_survive_a_mail_server_that_is_down(start_server: Callable[..., Server]) -> None:
    env = {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(free_port()),  # nothing listens there
        "ALERT_RECIPIENTS": "oncall@example.com",
        "ALERT_DIGEST_SECONDS": "1",
    }
    server = start_server("uvicorn", workers=2, env=env, app="apps:noisy_app", extra=("--factory",))

    assert server.get("/errors?count=5").status_code == 200
    server.wait_for_log(r"ERROR alert digest of \d+ record\(s\) not sent .*check the SMTP settings")
    assert server.get("/errors?count=5").status_code == 200  # still serving, nothing crashed
    assert server.get("/health").status_code == 200
    # The failure went straight to stderr, never through logging (which would feed the handler).
    logged = [line for line in server.output().splitlines() if re.match(r"\d{4}-\d\d-\d\d .* \[\S+\] ", line)]
    assert not [line for line in logged if "not sent" in line]


def resident_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)[1])  # type: ignore[index]


def test_an_error_flood_keeps_memory_and_digests_bounded(
    start_server: Callable[..., Server], smtp_sink: MailSink
) -> None:
    env = {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_sink.port),
        "ALERT_RECIPIENTS": "oncall@example.com",
        "ALERT_DIGEST_SECONDS": "30",  # one window holds the whole flood
    }
    server = start_server("uvicorn", workers=1, env=env, app="apps:noisy_app", extra=("--factory",))
    (worker,) = server.live_workers()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
        # Ready first: the start-up task (with PostgreSQL, a migration that loads Alembic) has run.
        wait_until(lambda: client.get("/health/ready").status_code == 200, "the worker to be ready")
        client.get("/errors", params={"count": 2000, "distinct": True})  # warm up the worker
        before = resident_kib(worker)
        for batch in range(50):  # 100,000 records, every one a different message
            params = {"count": 2000, "distinct": True, "first": 2000 * (batch + 1)}
            assert client.get("/errors", params=params).status_code == 200
        grown_kib = resident_kib(worker) - before

    server.stop()  # a stopping worker mails what is left of its window
    found = digests(smtp_sink)
    assert sum(count for _, count, _, _ in found) == 102_000  # every record counted, none twice
    assert grown_kib < 5_000, f"the worker grew by {grown_kib} KiB during the flood"
    for message in smtp_sink.received():
        body = str(message.get_payload())
        assert len(body) < 80_000, f"a digest of {len(body)} characters"
        assert "more record(s) of other messages are not listed" in body


def test_a_record_with_a_broken_character_does_not_lose_the_digest(smtp_sink: MailSink) -> None:
    digest = AlertDigest(smtp_settings(smtp_sink), lambda: "standby")
    logger = logging.getLogger("tests.alerts.undecodable")
    logger.addHandler(digest)
    # Not passed on to pytest's log capture: pytest-xdist cannot send a lone surrogate to its main process.
    logger.propagate = False
    try:
        logger.error("Cannot open %s", os.fsdecode(b"report-\xff.csv"))  # a name in another encoding
        logger.error("Another failure")
        run_scenario(digest.send_digest)
    finally:
        logger.removeHandler(digest)
    (mail,) = smtp_sink.received()
    assert "2 error record(s)" in str(mail.get_payload()) and "report-\\udcff.csv" in str(mail.get_payload())


def test_digests_that_could_not_be_sent_do_not_count_against_the_hourly_cap() -> None:
    sink = MailSink()  # down at first
    settings = smtp_settings(sink).model_copy(update={"alert_max_per_hour": 1})
    digest = AlertDigest(settings, lambda: "standby")
    logger = logging.getLogger("tests.alerts")
    logger.addHandler(digest)
    try:
        logger.error("During the outage")
        run_scenario(digest.send_digest)  # fails: nobody listens
        sink.start()
        logger.error("After the outage")
        run_scenario(digest.send_digest)
    finally:
        logger.removeHandler(digest)
        sink.stop()
    assert len(sink.received()) == 1  # the cap of one per hour was not used up by the failure


def smtp_settings(sink: MailSink) -> Settings:
    return Settings(
        email_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        alert_recipients="oncall@example.com",
        _env_file=None,
    )


def test_auto_tls_upgrades_the_connection_before_the_password_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted by the client's default TLS context
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    encrypted_at_login: list[bool] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        encrypted_at_login.append(session.ssl is not None)
        return AuthResult(success=True)

    sink = MailSink()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=sink.port,
        tls_context=server_tls,
        authenticator=authenticator,
        auth_require_tls=False,  # the server would take the password in clear text: the client must not
    )
    controller.start()
    try:
        settings = smtp_settings(sink).model_copy(
            update={"smtp_username": "svc", "smtp_password": SecretStr("pw")}
        )
        message = new_message(settings, ["ops@example.com"], "Hello", "Body")
        run_scenario(lambda: Mailer(settings).send(message))
    finally:
        controller.stop()
    assert encrypted_at_login == [True] and len(sink.received()) == 1
