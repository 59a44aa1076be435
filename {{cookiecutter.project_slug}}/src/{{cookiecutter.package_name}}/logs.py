"""Logging of a worker: one format for the service's lines, and no secret in any line.

The service's own records go to stderr through one handler on the root logger, beside the lines of
uvicorn or gunicorn. Every handler that writes a line, ours and the
server's, gets a ``RedactingFilter`` with the secrets of the settings.
"""

from __future__ import annotations

import logging

from .config import Settings
from .redaction import RedactingFilter

PACKAGE = __name__.partition(".")[0]
SERVER_LOGGERS = ["uvicorn", "uvicorn.access", "gunicorn.error", "gunicorn.access"]
"""The servers' loggers that have handlers of their own and do not propagate to the root logger."""
LINE_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


class ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler of the service's records (a class of its own, so it is installed once)."""


def configure_logging(settings: Settings) -> None:
    """Set the service's log level, install its stderr handler and redact secrets everywhere."""
    logging.getLogger(PACKAGE).setLevel(settings.log_level)
    root = logging.getLogger()
    if not any(isinstance(handler, ServiceHandler) for handler in root.handlers):
        handler = ServiceHandler()
        handler.setFormatter(logging.Formatter(LINE_FORMAT))
        root.addHandler(handler)
    redactor = RedactingFilter(settings.secret_values())
    for name in ["", *SERVER_LOGGERS]:
        for server_handler in logging.getLogger(name).handlers:
            for old in [f for f in server_handler.filters if isinstance(f, RedactingFilter)]:
                server_handler.removeFilter(old)
            server_handler.addFilter(redactor)
