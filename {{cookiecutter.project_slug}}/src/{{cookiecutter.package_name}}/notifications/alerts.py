"""Alert digests: every worker mails its own ERROR records, batched, so an error burst is one mail.

``AlertDigest`` is a ``logging.Handler`` installed on every worker (primary or not: an error on any
worker matters). ``emit`` only counts the record in a small table, so logging an error never waits
for a mail server and never blocks a request or the event loop. A background task mails the table
once per ``ALERT_DIGEST_SECONDS``: one digest with repeats collapsed and counted, at most
``ALERT_MAX_PER_HOUR`` per hour; the worker's host, pid and role are in the subject.

Everything is bounded, whatever the error rate: repeats are collapsed as they arrive (a flood of one
message is one line with a count), a window keeps at most ``MAX_DISTINCT`` different messages of at
most ``MAX_TEXT`` characters each, and what did not fit is counted and said in the digest.

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
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from email.message import EmailMessage

from ..config import Settings
from ..redaction import RedactingFilter
from .mail import Mailer, new_message

SERVICE = "{{ cookiecutter.project_slug }}"
NOTIFICATIONS_LOGGER = __name__.rpartition(".")[0]
WATCHED_LOGGERS = ["", "uvicorn", "gunicorn.error"]
"""Where the handler is attached: the root logger (the service's records propagate there), and the
server loggers that do not propagate to it."""
MAX_DISTINCT = 100
"""Different messages kept per window; records of further messages are only counted."""
MAX_TEXT = 500
"""Characters kept of one message (with its exception), so a digest stays under about 60 KB."""

Key = tuple[str, str, str]
"""(level, logger, message) of a record: records with the same key are one line of the digest."""


def start_alert_digests(settings: Settings, role: Callable[[], str]) -> AlertDigest | None:
    """Every worker mails its own ERROR records, when ALERT_RECIPIENTS is set."""
    if not settings.alert_to:
        return None
    alerts = AlertDigest(settings, role)
    alerts.start()
    return alerts


class AlertDigest(logging.Handler):
    """Counts this worker's ERROR records and mails them as one digest per window."""

    def __init__(
        self, settings: Settings, role: Callable[[], str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(level=logging.ERROR)
        self.addFilter(RedactingFilter(settings.secret_values()))  # no password in any mail
        self.settings = settings
        self.role = role
        self.clock = clock
        self.mailer = Mailer(settings)
        self.pending: dict[Key, int] = {}  # this window's records, collapsed
        self.overflow = 0  # records of this window that did not fit into ``pending``
        self.sent_at: deque[float] = deque()  # clock times of the digests sent in the last hour
        self.suppressed = 0  # records not mailed because ALERT_MAX_PER_HOUR was reached

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (logging.Handler.handle), which _drain takes too.
        if record.name.startswith(NOTIFICATIONS_LOGGER):
            return  # never mail about mailing
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        # Something a mail can carry: a broken character (a file name from another encoding) must
        # not make the whole digest unsendable.
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        key = (record.levelname, record.name, text[:MAX_TEXT])
        if key in self.pending:
            self.pending[key] += 1
        elif len(self.pending) < MAX_DISTINCT:
            self.pending[key] = 1
        else:
            self.overflow += 1

    def start(self) -> None:
        """Attach the handler and start the sender task (in the worker's event loop)."""
        for name in WATCHED_LOGGERS:
            logging.getLogger(name).addHandler(self)
        self.sender = asyncio.create_task(self._send_every_window(), name="alert-digests")

    async def stop(self) -> None:
        """Detach, stop the sender, and mail what is left of the last window (5 s at most each:
        a worker's shutdown must never wait for a mail server)."""
        for name in WATCHED_LOGGERS:
            logging.getLogger(name).removeHandler(self)
        self.sender.cancel()
        with suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(5):
                await self.sender
        with suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.send_digest()

    async def _send_every_window(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alert_digest_seconds)
            await self.send_digest()

    async def send_digest(self) -> None:
        """Mail this window's records as one digest, unless there are none or the hourly cap is reached."""
        records, overflow = self._drain()
        total = sum(records.values()) + overflow
        if not total:
            return
        now = self.clock()
        while self.sent_at and now - self.sent_at[0] >= 3600:
            self.sent_at.popleft()
        if len(self.sent_at) >= self.settings.alert_max_per_hour:
            self.suppressed += total
            return  # counted, and reported in the next digest that may be sent
        message = self.compose(records, overflow)
        try:
            await self.mailer.send(message)
        except Exception as exc:
            print(
                f"ERROR alert digest of {total} record(s) not sent ({exc}); check the SMTP settings",
                file=sys.stderr,
                flush=True,
            )
        else:
            self.sent_at.append(now)  # only mails that went out count against the hourly cap
            self.suppressed = 0

    def _drain(self) -> tuple[dict[Key, int], int]:
        with self.lock:  # type: ignore[union-attr]  # the handler's own lock, see emit
            records, self.pending = self.pending, {}
            overflow, self.overflow = self.overflow, 0
        return records, overflow

    def compose(self, records: dict[Key, int], overflow: int = 0) -> EmailMessage:
        total = sum(records.values()) + overflow
        where = f"{socket.gethostname()} (pid {os.getpid()}, {self.role()})"
        window = self.settings.alert_digest_seconds
        lines = [f"{total} error record(s) in the last {window:g} s on {where}:", ""]
        ranked = sorted(records.items(), key=lambda item: -item[1])
        lines += [f"{count:>6} x {level} {name}: {text}" for (level, name, text), count in ranked]
        if overflow:
            lines += [
                "",
                f"{overflow} more record(s) of other messages are not listed: a digest lists at most "
                f"{MAX_DISTINCT} different messages.",
            ]
        if self.suppressed:
            lines += [
                "",
                f"{self.suppressed} more record(s) were not mailed: ALERT_MAX_PER_HOUR was reached.",
            ]
        subject = f"[{SERVICE}] {total} error(s) on {where}"
        return new_message(self.settings, self.settings.alert_to, subject, "\n".join(lines))
