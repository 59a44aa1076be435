"""Sending e-mail: to the log (``EMAIL_BACKEND=console``, no server needed) or over SMTP (aiosmtplib)."""

from __future__ import annotations

import logging
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from ..config import Settings

logger = logging.getLogger(__name__)


def new_message(settings: Settings, to: list[str], subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.email_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message.set_content(body)
    return message


class Mailer:
    """Delivers messages with the backend chosen by ``EMAIL_BACKEND``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` or raise (``aiosmtplib.SMTPException`` or ``OSError``) on failure."""
        settings = self.settings
        if settings.email_backend == "console":
            logger.info("E-mail (console backend, not sent):\n%s", message.as_string())
            return
        await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=settings.smtp_password.get_secret_value() or None,
            use_tls=settings.smtp_tls == "tls",
            # None: STARTTLS whenever the server offers it (aiosmtplib's own default).
            start_tls={"auto": None, "starttls": True}.get(settings.smtp_tls, False),
            timeout=settings.smtp_timeout_seconds,
        )
