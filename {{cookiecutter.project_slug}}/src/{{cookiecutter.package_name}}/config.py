"""Settings, read once at start-up from environment variables (or an optional ``.env`` file).

Each field is read from the variable of the same name in upper case: ``lock_path`` from ``LOCK_PATH``.
The generated README and ``.env.example`` list them all with their defaults. Every number has a range
(a retry every nanosecond, or a catch-up window of three thousand years, is a typo, not a wish), and
``load_settings`` turns any bad value into one line that names the variable and what it accepts.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from annotated_types import Ge, Gt, Le
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .coordination.backend import SECRET_SETTINGS as BACKEND_SECRET_SETTINGS
from .coordination.backend import BackendSettings
from .coordination.jobs import cron_trigger

SECRET_SETTINGS = {"SMTP_PASSWORD", *BACKEND_SECRET_SETTINGS}
"""Settings whose value may hold a password: never repeated in an error message."""


class ConfigError(Exception):
    """A setting has a value the service cannot run with; the message is one line naming it."""


class Settings(BackendSettings, BaseSettings):
    """The service's settings; a bad value stops the service at start with one clear line.

    The lock backend's own settings (``LOCK_PATH``, ``REDIS_URL``, ``DATABASE_URL``, ...) come from
    ``BackendSettings``, defined in the backend's module.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", allow_inf_nan=False
    )

    # -- the server, as started by the launcher (python -m <package>) ------------------------------
    host: str = Field(default="127.0.0.1", min_length=1)
    """Address the launcher binds (0.0.0.0 in the Docker image)."""
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=4, ge=1, le=256)
    """Worker processes the launcher starts; each serves HTTP, one of them is the primary."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    """text: one readable line per record; json: one JSON object per line, the server's lines too."""

    # -- e-mail -----------------------------------------------------------------------------------
    email_backend: Literal["console", "smtp"] = "console"
    """console: every message is written to the log (no server needed); smtp: sent with aiosmtplib."""
    email_from: str = "{{ cookiecutter.project_slug }}@localhost"
    smtp_host: str = Field(default="localhost", min_length=1)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_tls: Literal["auto", "none", "starttls", "tls"] = "auto"
    """auto: STARTTLS when the server offers it; starttls: required; tls: implicit TLS; none: never."""
    smtp_timeout_seconds: float = Field(default=30.0, ge=1, le=600)

    report_schedule: str = "0 7 * * *"
    """When the primary sends the report: 5 crontab fields, or 6 with leading seconds."""
    report_timezone: str = "UTC"
    report_recipients: str = ""
    """Comma-separated addresses; empty: no scheduled reports."""
    report_catch_up_seconds: float = Field(default=3600.0, ge=0, le=31 * 86400)
    """Periods missed (no primary, SMTP down) are sent late if at most this old; older ones are skipped."""

    alert_recipients: str = ""
    """Comma-separated addresses for the ERROR digests of every worker; empty: no alert mails."""
    alert_digest_seconds: float = Field(default=60.0, ge=1, le=86400)
    alert_max_per_hour: int = Field(default=12, ge=1, le=3600)

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
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Europe" is a directory of zones
            raise ValueError("must be an IANA time zone name, e.g. UTC or Europe/Vienna") from None
        return name

    @field_validator("email_from", "report_recipients", "alert_recipients")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for address in split_addresses(value):
            if not EMAIL_ADDRESS.fullmatch(address):
                raise ValueError(f"{address!r} is not an e-mail address (comma-separate several)")
        return value

    @model_validator(mode="after")
    def _no_password_in_clear_text(self) -> Self:
        if self.smtp_tls == "none" and self.smtp_password.get_secret_value():
            raise ValueError(
                "SMTP_TLS='none': must not be none while SMTP_PASSWORD is set, or the password would "
                "cross the network in clear text; use auto, starttls or tls"
            )
        return self

    @property
    def report_to(self) -> list[str]:
        return split_addresses(self.report_recipients)

    @property
    def alert_to(self) -> list[str]:
        return split_addresses(self.alert_recipients)

    def secret_values(self) -> list[str]:
        """Every secret these settings hold, in each form it may appear in, for log redaction."""
        secrets = [self.smtp_password.get_secret_value(), *self.backend_secrets()]
        return [secret for secret in secrets if secret]


EMAIL_ADDRESS = re.compile(r"[^@\s,<>]+@[^@\s,<>]+")


def split_addresses(value: str) -> list[str]:
    return [address.strip() for address in value.split(",") if address.strip()]


def allowed_range(field_name: str) -> str | None:
    """What a numeric setting accepts, e.g. 'a number from 1 to 86400', or None if it is no number."""
    field = Settings.model_fields.get(field_name)
    if field is None or field.annotation not in (int, float):
        return None
    low = next((bound.ge for bound in field.metadata if isinstance(bound, Ge)), None)
    above = next((bound.gt for bound in field.metadata if isinstance(bound, Gt)), None)
    high = next((bound.le for bound in field.metadata if isinstance(bound, Le)), None)
    kind = "a whole number" if field.annotation is int else "a number"
    if low is not None and high is not None:
        return f"{kind} from {_plain(low)} to {_plain(high)}"
    if above is not None:
        return f"{kind} greater than {_plain(above)}"
    return kind


def _plain(bound: object) -> str:
    """2678400, not 2.6784e+06; 0.05 as 0.05."""
    number = float(str(bound))
    return str(int(number)) if number.is_integer() else str(number)


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning pydantic's report into one line that names the variable."""
    try:
        return Settings(**overrides)
    except UnicodeDecodeError as exc:
        reason = f"{exc.reason} at byte {exc.start}"
        raise ConfigError(f"invalid settings file .env: it is not UTF-8 text ({reason})") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        if not error["loc"]:  # a rule about several settings: the message names them
            raise ConfigError(f"invalid setting {error['msg'].removeprefix('Value error, ')}") from None
        field_name = str(error["loc"][0])
        name = field_name.upper()
        reason = error["msg"].removeprefix("Value error, ")
        if expected := allowed_range(field_name):
            reason = f"must be {expected}"
        value = "<hidden>" if name in SECRET_SETTINGS else repr(error.get("input"))
        raise ConfigError(f"invalid setting {name}={value}: {reason}") from None
