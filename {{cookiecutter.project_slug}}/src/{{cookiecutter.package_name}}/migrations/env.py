"""How Alembic reaches the service's database, for the start-up task and for ``alembic`` by hand.

The URL is the service's ``DATABASE_URL``: from the settings the start-up task passes in, or read
like the service reads it (environment variables, ``.env``) when ``alembic`` runs from the project
root. It is never printed.

An upgrade runs all its revisions in one transaction (PostgreSQL's DDL is transactional): a revision
that fails leaves nothing of the run behind. The transaction first takes an advisory lock, so that
two upgrades at once (one started by hand, or one still running in a primary that was deposed
meanwhile) run one after the other, and the second finds the database at ``head`` already.
"""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import text

from {{ cookiecutter.package_name }}.config import ConfigError, Settings, load_settings
from {{ cookiecutter.package_name }}.database import engine, migration_lock_key

config = context.config
try:
    settings: Settings = config.attributes.get("settings") or load_settings()
except ConfigError as exc:  # by hand, a bad setting: one line that names it, as the service says it
    raise SystemExit(f"ERROR: {exc}") from None

if not logging.getLogger().handlers:  # by hand: show Alembic's progress ("Running upgrade ...")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")


def run_migrations() -> None:
    if context.is_offline_mode():  # alembic upgrade head --sql: the SQL, for a DBA to run
        context.configure(dialect_name="postgresql", literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    with engine(settings).connect() as connection:
        context.configure(connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": migration_lock_key(settings)})
            context.run_migrations()  # reads the current revision only now, under the lock


run_migrations()
