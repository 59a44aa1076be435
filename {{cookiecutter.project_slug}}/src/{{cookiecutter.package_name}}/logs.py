"""Logging of a worker: one format for the service's lines, and no secret in any line.

The service's own records go to stderr through one handler on the root logger, beside the lines of
uvicorn or gunicorn. Every handler that writes a line, ours and the server's, gets a
``RedactingFilter`` with the secrets of the settings.

``LOG_FORMAT=json`` writes every line, the server's included, as one JSON object: ``time``,
``level``, ``logger``, ``message``, ``pid``, and this worker's ``role`` and ``epoch`` in the
election (python-json-logger). The messages keep their wording (``Worker role change: ...``).
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from .config import Settings
from .redaction import RedactingFilter

if TYPE_CHECKING:
    from .coordination import Election

PACKAGE = __name__.partition(".")[0]
SERVER_LOGGERS = ["uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error", "gunicorn.access"]
"""The servers' loggers that may have handlers of their own."""
LINE_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
JSON_FIELDS = {
    "asctime": "time",
    "levelname": "level",
    "name": "logger",
    "message": "message",
    "process": "pid",
}
"""The record attributes of a JSON line, and their names in it (``role`` and ``epoch`` follow)."""


class ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler of the service's records (a class of its own, so it is installed once)."""


class WorkerFields(logging.Filter):
    """Adds this worker's ``role`` and ``epoch`` to each record (null before the election runs)."""

    election: Election | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        election = WorkerFields.election
        primary = election is not None and election.is_primary
        record.role = None if election is None else "primary" if primary else "standby"
        record.epoch = election.lock.epoch if election is not None and primary else None
        return True


def log_role_of(election: Election) -> None:
    """From now on, log lines carry the role and epoch of this worker in ``election``."""
    WorkerFields.election = election


def json_formatter() -> logging.Formatter:
    return JsonFormatter([*JSON_FIELDS, "role", "epoch"], rename_fields=JSON_FIELDS, timestamp=False)


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging configuration for the launcher: with ``LOG_FORMAT=json``, the lines of its
    supervisor process (which never imports the app) are JSON as well."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    if settings.log_format == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": f"{__name__}.json_formatter"}
    return config


def configure_logging(settings: Settings) -> None:
    """Set the service's log level and format, install its stderr handler, redact secrets everywhere."""
    logging.getLogger(PACKAGE).setLevel(settings.log_level)
    root = logging.getLogger()
    if not any(isinstance(handler, ServiceHandler) for handler in root.handlers):
        root.addHandler(ServiceHandler())
    formatter = json_formatter() if settings.log_format == "json" else logging.Formatter(LINE_FORMAT)
    redactor, fields = RedactingFilter(settings.secret_values()), WorkerFields()
    for name in ["", *SERVER_LOGGERS]:
        for handler in logging.getLogger(name).handlers:
            for old in [f for f in handler.filters if isinstance(f, RedactingFilter | WorkerFields)]:
                handler.removeFilter(old)
            handler.addFilter(fields)
            handler.addFilter(redactor)  # after the fields: nothing it adds escapes redaction
            if isinstance(handler, ServiceHandler) or settings.log_format == "json":
                handler.setFormatter(formatter)
