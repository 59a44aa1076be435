"""The service's own tables in the PostgreSQL database, kept up to date by Alembic.

The schema's history is in ``migrations/`` beside this module (so the wheel and the Docker image
carry it): ``migrations/env.py`` (how Alembic reaches the database) and one file per revision in
``migrations/versions/``. The start-up task ``migrate_database`` in ``jobs.py`` runs
``upgrade_database`` once per release on the primary, before any worker is ready. By hand, from
the project root (``[tool.alembic]`` in pyproject.toml): ``alembic upgrade head``, or
``alembic revision -m "add a table"`` for a new revision.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from .config import Settings
from .coordination.postgres_lock import advisory_key

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine

# Alembic and SQLAlchemy are imported in the functions that use them: only the primary needs them,
# once per release, in the upgrade's thread; every worker would otherwise load them as it starts.

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""Alembic's script location (the tests point it at a copy with a broken revision)."""


def engine(settings: Settings) -> Engine:
    """A SQLAlchemy engine on ``DATABASE_URL``, for Alembic.

    psycopg connects with the URL as it is, exactly as the primary lock does: SQLAlchemy's own URL
    parser knows fewer of libpq's forms (several hosts, ``?host=`` for a Unix socket, ``?password=``),
    and an engine without a URL has no password to show in any message.
    """

    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    def connect() -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            settings.database_url,
            connect_timeout=10,
            application_name=f"{settings.lock_key_prefix} migrations",
        )

    return create_engine("postgresql+psycopg://", creator=connect, poolclass=NullPool)


def migration_lock_key(settings: Settings) -> int:
    """The advisory lock every upgrade holds while it runs (see ``migrations/env.py``)."""
    return advisory_key(f"{settings.lock_key_prefix}:migrations")


def alembic_config(settings: Settings) -> Config:
    """Alembic's configuration for the service: the script location, and the service's settings
    for ``env.py`` (the command line reads ``[tool.alembic]`` and the environment instead)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["settings"] = settings
    return config


def upgrade_database(settings: Settings) -> None:
    """``alembic upgrade head``: every revision not applied yet, in one transaction. It blocks:
    call it in a thread (``asyncio.to_thread``), never on the event loop."""
    from alembic import command

    logging.getLogger("alembic").setLevel(settings.log_level)  # "Running upgrade ..." in the log
    command.upgrade(alembic_config(settings), "head")
