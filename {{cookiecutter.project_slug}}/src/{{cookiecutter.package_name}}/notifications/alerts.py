"""Alert digests: every worker mails its own ERROR records, batched, so an error burst is one mail.

``AlertDigest`` is a ``logging.Handler`` installed on every worker (primary or not: an error on any
worker matters). ``emit`` only puts a small tuple on a thread-safe queue, so logging an error never
waits for a mail server and never blocks a request or the event loop. A background task drains the
queue once per ``ALERT_DIGEST_SECONDS`` and sends one digest with repeats collapsed and counted,
at most ``ALERT_MAX_PER_HOUR`` per hour; the worker's host, pid and role are in the subject.

When sending fails, the digest is dropped and the failure is written to stderr (once per window,
as there is one attempt per window), never through logging: a broken mail server must not feed the
very handler that reports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import suppress
from email.message import EmailMessage
from queue import Empty, SimpleQueue

from ..config import Settings
from .mail import Mailer, new_message

SERVICE = "{{ cookiecutter.project_slug }}"
NOTIFICATIONS_LOGGER = __name__.rpartition(".")[0]
WATCHED_LOGGERS = ["", "{{ cookiecutter.package_name }}", "uvicorn.error", "gunicorn.error"]
"""Where the handler is attached: the root logger, and the loggers that do not propagate to it."""


def start_alert_digests(settings: Settings, role: Callable[[], str]) -> AlertDigest | None:
    """Every worker mails its own ERROR records, when ALERT_RECIPIENTS is set."""
    if not settings.alert_to:
        return None
    alerts = AlertDigest(settings, role)
    alerts.start()
    return alerts


class AlertDigest(logging.Handler):
    """Queues this worker's ERROR records and mails them as one digest per window."""

    def __init__(self, settings: Settings, role: Callable[[], str]) -> None:
        super().__init__(level=logging.ERROR)
        self.settings = settings
        self.role = role
        self.mailer = Mailer(settings)
        self.records: SimpleQueue[tuple[str, str, str]] = SimpleQueue()
        self.sent_at: deque[float] = deque()  # monotonic times of the digests sent in the last hour
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(NOTIFICATIONS_LOGGER):
            return  # never mail about mailing
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        self.records.put((record.levelname, record.name, text[:500]))

    def start(self) -> None:
        """Attach the handler and start the sender task (in the worker's event loop)."""
        for name in WATCHED_LOGGERS:
            logging.getLogger(name).addHandler(self)
        self.sender = asyncio.create_task(self._send_every_window(), name="alert-digests")

    async def stop(self) -> None:
        """Detach, stop the sender, and mail what is left of the last window (5 s at most)."""
        for name in WATCHED_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        self.sender.cancel()
        with suppress(asyncio.CancelledError):
            await self.sender
        with suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.send_digest()

    async def _send_every_window(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alert_digest_seconds)
            await self.send_digest()

    async def send_digest(self) -> None:
        records = self._drain()
        if not records:
            return
        now = time.monotonic()
        while self.sent_at and now - self.sent_at[0] > 3600:
            self.sent_at.popleft()
        if len(self.sent_at) >= self.settings.alert_max_per_hour:
            self.suppressed += len(records)
            return  # counted, and reported in the next digest that may be sent
        self.sent_at.append(now)
        try:
            await self.mailer.send(self._compose(records))
        except Exception as exc:
            print(
                f"ERROR alert digest of {len(records)} record(s) not sent ({exc}); check the SMTP settings",
                file=sys.stderr,
                flush=True,
            )
        else:
            self.suppressed = 0

    def _drain(self) -> list[tuple[str, str, str]]:
        records = []
        while True:
            try:
                records.append(self.records.get_nowait())
            except Empty:
                return records

    def _compose(self, records: list[tuple[str, str, str]]) -> EmailMessage:
        counts = Counter(records)
        where = f"{socket.gethostname()} (pid {os.getpid()}, {self.role()})"
        window = self.settings.alert_digest_seconds
        lines = [f"{len(records)} error record(s) in the last {window:g} s on {where}:", ""]
        lines += [
            f"{count:>6} x {level} {name}: {text}" for (level, name, text), count in counts.most_common()
        ]
        if self.suppressed:
            lines += [
                "",
                f"{self.suppressed} more record(s) were not mailed: ALERT_MAX_PER_HOUR was reached.",
            ]
        subject = f"[{SERVICE}] {len(records)} error(s) on {where}"
        return new_message(self.settings, self.settings.alert_to, subject, "\n".join(lines))
