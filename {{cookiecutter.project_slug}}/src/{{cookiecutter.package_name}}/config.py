"""Settings, read once at start-up from environment variables (or an optional ``.env`` file).

Each field is read from the variable of the same name in upper case: ``lock_path`` from ``LOCK_PATH``.
The generated README and ``.env.example`` list them all with their defaults.
"""

from __future__ import annotations

{% if cookiecutter.lock_backend == "file" -%}
from pathlib import Path
{% endif -%}
from typing import Literal
{% if cookiecutter.lock_backend == "redis" -%}
from urllib.parse import urlsplit
{% endif %}
from pydantic import Field, ValidationError, field_validator
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
