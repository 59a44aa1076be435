"""Keeping secrets out of every output: logs, alert mails, ``/health/worker`` and the status command.

Two tools, used together:

* ``mask_url`` writes a connection URL without its credentials, for the messages that name a server.
  A password can sit in the user part (``redis://:secret@host``) or in the query string
  (``redis://host/0?password=secret``, which redis-py accepts as well): both are masked.
* ``RedactingFilter`` is a safety net on every log handler: if a secret value slips into a log record
  anyway (an exception message of a library that echoes its connection string, say), it is replaced
  with ``***`` before the record is written or mailed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

MASK = "***"
SECRET_QUERY_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)
"""Query parameters whose value is a secret: password, ssl_password, sslpassword, auth_token, ..."""
MIN_REDACTED_LENGTH = 4
"""Shorter secrets are not searched for in log text: redacting every "ab" would garble the logs."""


def _split_userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    """``(user, password, host_and_port)`` of a URL's network location, undecoded."""
    if "@" not in netloc:
        return None, None, netloc
    userinfo, _, host = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return user, (password if colon else None), host


def mask_url(url: str) -> str:
    """The URL with every password replaced by ``***``, fit for logs and endpoints.

    A user part without a colon (``redis://secret@host``) is masked whole: some write the password
    there, and some clients read it as one.
    """
    parts = urlsplit(url)
    user, password, host = _split_userinfo(parts.netloc)
    if user is None:
        netloc = parts.netloc
    else:
        netloc = f"{MASK}@{host}" if password is None else f"{user}:{MASK}@{host}"
    query = "&".join(
        f"{key}={MASK}" if SECRET_QUERY_KEY.search(unquote(key)) else f"{key}{sep}{value}"
        for key, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries, as written and percent-decoded (both forms may end up in text)."""
    parts = urlsplit(url)
    user, password, _ = _split_userinfo(parts.netloc)
    found = [secret for secret in (password if password is not None else user,) if secret]
    for key, _, value in (item.partition("=") for item in parts.query.split("&") if item):
        if SECRET_QUERY_KEY.search(unquote(key)) and value:
            found.append(value)
    return sorted({form for secret in found for form in (secret, unquote(secret), unquote_plus(secret))})


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every secret replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: one may contain another
        if len(secret) >= MIN_REDACTED_LENGTH:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Replaces the given secrets in a record's message and traceback before any handler writes it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if len(secret) >= MIN_REDACTED_LENGTH]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        if self._leaks(record):
            # Redact the template and each argument, keeping their shape: some formatters (uvicorn's
            # access log) unpack the arguments themselves.
            record.msg = self._redacted(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(self._redacted(arg) for arg in record.args)
            elif isinstance(record.args, dict):
                record.args = {key: self._redacted(arg) for key, arg in record.args.items()}
            if self._leaks(record):  # a secret made of template and argument together: flatten it
                record.msg, record.args = redact(record.getMessage(), self.secrets), ()
        if record.exc_info and not record.exc_text:
            # Formatters reuse a record's cached exc_text: fill it in, already redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True

    def _leaks(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit: logging reports that itself
            return False
        return redact(message, self.secrets) != message

    def _redacted(self, value: object) -> object:
        """An argument of a log record without secrets (as text if its text held one)."""
        text = value if isinstance(value, str) else str(value)
        redacted = redact(text, self.secrets)
        return value if redacted == text else redacted
