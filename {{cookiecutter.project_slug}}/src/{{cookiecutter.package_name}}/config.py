"""Settings, read once at start-up from environment variables (or an optional ``.env`` file).

Each field is read from the variable of the same name in upper case: ``lock_path`` from ``LOCK_PATH``.
The generated README and ``.env.example`` list them all with their defaults.
"""

from __future__ import annotations

import re
{% if cookiecutter.lock_backend == "file" -%}
from pathlib import Path
{% endif -%}
from typing import Literal
{% if cookiecutter.lock_backend == "redis" -%}
from urllib.parse import urlsplit
{% endif -%}
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_SETTINGS = {"REDIS_URL", "SMTP_PASSWORD"}
"""Settings whose value may hold a password: never repeated in an error message."""


class ConfigError(Exception):
    """A setting has a value the service cannot run with; the message is one line naming it."""


class Settings(BaseSettings):
    """The service's settings; a bad value stops the worker at start with one clear line."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

{%- if cookiecutter.lock_backend == "file" %}
    lock_path: Path = Path({{ cookiecutter.lock_path | tojson }})
    """The lock file every worker (and every container sharing the volume) competes for."""
{%- else %}
    redis_url: str = "redis://localhost:6379/0"
    """The Redis shared by every worker of every instance; may carry a password; rediss:// for TLS."""
    lock_key_prefix: str = Field(default={{ cookiecutter.project_slug | tojson }}, min_length=1)
    """Prefix of the service's Redis keys, so that several services can share one Redis."""
    lock_ttl_seconds: float = Field(default=10.0, ge=1, le=3600)
    """Lifetime of the primary's lease: a crashed primary is replaced within this plus the retry."""
{%- endif %}
    lock_retry_seconds: float = Field(default=1.0, gt=0, le=60)
    """How often standbys retry; after a lock error the delay doubles up to 10 s."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    email_backend: Literal["console", "smtp"] = "console"
    """console: every message is written to the log (no server needed); smtp: sent with aiosmtplib."""
    email_from: str = "{{ cookiecutter.project_slug }}@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)

    report_schedule: str = "0 7 * * *"
    """When the primary sends the report: 5 crontab fields, or 6 with leading seconds."""
    report_timezone: str = "UTC"
    report_recipients: str = ""
    """Comma-separated addresses; empty: no scheduled reports."""
    report_catch_up_seconds: float = Field(default=3600.0, ge=0)
    """Periods missed (no primary, SMTP down) are sent late if at most this old; older ones are skipped."""

    alert_recipients: str = ""
    """Comma-separated addresses for the ERROR digests of every worker; empty: no alert mails."""
    alert_digest_seconds: float = Field(default=60.0, gt=0)
    alert_max_per_hour: int = Field(default=12, ge=1)

    @field_validator("report_schedule")
    @classmethod
    def _cron(cls, expression: str) -> str:
        cron_trigger(expression, "UTC")  # raises ValueError with the reason
        return expression

    @field_validator("report_timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("must be an IANA time zone name, e.g. UTC or Europe/Vienna") from None
        return name

    @field_validator("email_from", "report_recipients", "alert_recipients")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for address in split_addresses(value):
            if not EMAIL_ADDRESS.fullmatch(address):
                raise ValueError(f"{address!r} is not an e-mail address (comma-separate several)")
        return value

    @property
    def report_to(self) -> list[str]:
        return split_addresses(self.report_recipients)

    @property
    def alert_to(self) -> list[str]:
        return split_addresses(self.alert_recipients)
{%- if cookiecutter.lock_backend == "file" %}

    @field_validator("lock_path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # A relative path would name a different file for workers started in different directories.
        if not path.is_absolute():
            raise ValueError("must be an absolute path, e.g. /run/my-service/primary.lock")
        return path
{%- else %}

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        parts = urlsplit(url)
        try:
            valid = parts.scheme == "unix" or (parts.scheme in ("redis", "rediss") and parts.hostname)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(
                "must be a redis://, rediss:// or unix:// URL, e.g. redis://:password@redis:6379/0"
            )
        return url
{%- endif %}


EMAIL_ADDRESS = re.compile(r"[^@\s,<>]+@[^@\s,<>]+")


def split_addresses(value: str) -> list[str]:
    return [address.strip() for address in value.split(",") if address.strip()]


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    """APScheduler's trigger for a 5-field crontab, or 6 fields with leading seconds."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError("must have 5 crontab fields (minute hour day month weekday) or 6 (seconds first)")
    second = fields.pop(0) if len(fields) == 6 else "0"
    minute, hour, day, month, weekday = fields
    if any(char.isdigit() for char in weekday):
        # crontab counts Sunday as 0, APScheduler 3 counts Monday as 0: names avoid the trap.
        raise ValueError("write the weekday field with names (mon-fri, sun) or *, not numbers")
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=weekday,
            timezone=timezone,
        )
    except ValueError as exc:
        raise ValueError(f"is not a valid schedule: {exc}") from None


def load_settings() -> Settings:
    """Read the settings, turning pydantic's report into one line that names the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        reason = error["msg"].removeprefix("Value error, ")
        value = "<hidden>" if name in SECRET_SETTINGS else repr(error.get("input"))
        raise ConfigError(f"invalid setting {name}={value}: {reason}") from None
