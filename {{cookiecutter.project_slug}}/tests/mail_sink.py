"""A mail server of the tests' own (aiosmtpd on a free port) that keeps what it receives, and what
the report tests check in it."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from itertools import pairwise
from typing import Any

from aiosmtpd.controller import Controller

from support import free_port

EVERY_2_SECONDS = "*/2 * * * * *"
PERIOD = re.compile(r"report[.:](\d{8}T\d{6}Z)")


def period_of(text: str) -> datetime:
    match = PERIOD.search(text)
    assert match, text
    return datetime.strptime(match[1], "%Y%m%dT%H%M%SZ")


class MailSink:
    """An aiosmtpd handler that keeps every delivered message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.arrivals: list[float] = []  # time.monotonic() of each delivery
        self.last_delivery = 0.0
        self._lock = threading.Lock()
        self.controller: Controller | None = None
        self.port = free_port()
        self.before_accepting: Callable[[Message], None] | None = None
        """Called with each message once it is kept, before the server says "250" to the sender."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content)
        with self._lock:
            self.messages.append(message)
            self.last_delivery = time.monotonic()
            self.arrivals.append(self.last_delivery)
        if self.before_accepting is not None:
            self.before_accepting(message)
        return "250 Message accepted"

    def start(self, *, may_move: bool = False) -> None:
        """Listen on ``port``, or with ``may_move`` on another free port if that one was taken."""
        for _ in range(3):
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
            try:
                self.controller.start()
                return
            except (OSError, RuntimeError):
                if not may_move:
                    raise
                self.port = free_port()
        raise AssertionError("three free ports in a row were taken before the mail server could bind them")

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def received(self, prefix: str = "") -> list[Message]:
        with self._lock:
            return [m for m in self.messages if str(m["Message-ID"] or "").startswith(prefix)]

    def periods(self) -> list[datetime]:
        """The period of every report received, in order of arrival (duplicates included)."""
        return [period_of(str(message["Message-ID"])) for message in self.received("<report.")]


def mail_env(sink: MailSink, **extra: str) -> dict[str, str]:
    env = {"EMAIL_BACKEND": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(sink.port)}
    env.update(REPORT_SCHEDULE=EVERY_2_SECONDS, REPORT_RECIPIENTS="ops@example.com")
    env.update(extra)
    return env


def assert_each_period_once_without_gaps(periods: list[datetime]) -> None:
    counts = Counter(periods)
    assert [period for period, count in counts.items() if count > 1] == [], "duplicate reports"
    gaps = [(a, b) for a, b in pairwise(sorted(counts)) if b - a != timedelta(seconds=2)]
    assert gaps == [], "missed periods"
