"""Settings, read once at start-up from environment variables (or an optional ``.env`` file).

Each field is read from the variable of the same name in upper case: ``lock_path`` from ``LOCK_PATH``.
The generated README and ``.env.example`` list them all with their defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigError(Exception):
    """A setting has a value the service cannot run with; the message is one line naming it."""


class Settings(BaseSettings):
    """The service's settings; a bad value stops the worker at start with one clear line."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    lock_path: Path = Path({{ cookiecutter.lock_path | tojson }})
    """The lock file every worker (and every container sharing the volume) competes for."""
    lock_retry_seconds: float = Field(default=1.0, gt=0, le=60)
    """First delay before retrying after the lock backend failed; it doubles up to 30 s."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("lock_path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # A relative path would name a different file for workers started in different directories.
        if not path.is_absolute():
            raise ValueError("must be an absolute path, e.g. /run/my-service/primary.lock")
        return path


def load_settings() -> Settings:
    """Read the settings, turning pydantic's report into one line that names the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        reason = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}={error.get('input')!r}: {reason}") from None
