"""The database migration (PostgreSQL backend): ``alembic upgrade head`` as the start-up task of
``jobs.py``, on real workers against the tests' own PostgreSQL, and ``alembic`` run by hand.

Each test has a database of its own: the example table and Alembic's version table belong to a
database, not to a lock scope.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from alembic.script import ScriptDirectory
from psycopg import sql

from {{ cookiecutter.package_name }} import __version__
from {{ cookiecutter.package_name }}.database import MIGRATIONS, migration_lock_key

from backend_postgres import PostgresServer, mark_released
from conftest import PROJECT, Server, service_env, settings_from
from support import SENTINEL, assert_no_secret, wait_until, wait_until_every_worker_is_ready

TASK = f"startup:migrate_database:{__version__}"
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()
UPGRADE_LINE = r"Running upgrade  -> "
"""Alembic's log line for the first revision, in the service's log as in the terminal."""


@pytest.fixture
def lock_env(lock_env: dict[str, str], backend_server: PostgresServer) -> dict[str, str]:
    """The suite's lock scope, in a database of this test's own."""
    name = f"test_{uuid.uuid4().hex[:8]}"
    with backend_server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    env = {**lock_env, "DATABASE_URL": f"{backend_server.url.rsplit('/', 1)[0]}/{name}"}
    mark_released(env)
    return env


def tables(lock_env: dict[str, str]) -> set[str]:
    with psycopg.connect(lock_env["DATABASE_URL"], autocommit=True) as conn:
        query = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        return {name for (name,) in conn.execute(query)}


def applied_revision(lock_env: dict[str, str]) -> str | None:
    with psycopg.connect(lock_env["DATABASE_URL"], autocommit=True) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else None


@contextmanager
def upgrades_held_up(lock_env: dict[str, str]) -> Iterator[None]:
    """Hold the advisory lock that every upgrade takes first, as an upgrade run by hand would."""
    key = migration_lock_key(settings_from(lock_env))
    with psycopg.connect(lock_env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield  # closing the connection releases it


def test_no_worker_is_ready_until_the_migration_ran_and_a_restart_does_not_run_it_again(
    start_server: Callable[..., Server], lock_env: dict[str, str]
) -> None:
    with upgrades_held_up(lock_env):
        server = start_server("uvicorn", workers=3)
        server.wait_for_log(rf"Start-up task {TASK} starts")
        for answer in server.answers_from_every_worker("/health/ready").values():
            assert answer["status"] == "starting" and answer["pending"] == [TASK], answer
        assert "example" not in tables(lock_env)

    wait_until_every_worker_is_ready(server)
    assert "example" in tables(lock_env) and applied_revision(lock_env) == HEAD
    server.wait_for_log(UPGRADE_LINE)
    server.stop()

    restarted = start_server("uvicorn", workers=2)  # the same version
    wait_until_every_worker_is_ready(restarted)
    restarted.stop()
    assert "Start-up task" not in restarted.output() and UPGRADE_LINE not in restarted.output()


BROKEN_REVISION = '''"""A revision that fails half-way: its table is made, then a statement fails."""
import sqlalchemy as sa
from alembic import op

revision = "b40c3e000001"
down_revision = {head!r}


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("SELECT no_such_function()")
'''


def test_a_failing_migration_leaves_nothing_behind_and_every_worker_not_ready_with_the_reason(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    broken = migrations / "versions" / "b40c3e000001_broken.py"
    broken.write_text(BROKEN_REVISION.format(head=HEAD))
    app = {"app": "apps:migrations_app", "extra": ("--factory",)}
    server = start_server("uvicorn", workers=3, env={"MIGRATIONS_DIRECTORY": str(migrations)}, **app)
    server.wait_for_log(rf"Run {TASK} failed, will retry")
    primary = server.wait_for_primary()

    def every_worker_names_the_failing_task() -> bool:
        answers = server.answers_from_every_worker("/health/ready")
        reason = answers[primary].get("failing", {}).get(TASK) or ""  # the primary saw the error
        return "no_such_function" in reason and all(TASK in answer["failing"] for answer in answers.values())

    wait_until(every_worker_names_the_failing_task, "every worker to name the failing task")
    assert server.get("/health/ready").status_code == 503
    # One transaction for the whole upgrade: not even the revision before the broken one stays.
    assert not {"example", "half_done", "alembic_version"} & tables(lock_env)

    broken.unlink()  # the fix; the primary retries on its own
    wait_until_every_worker_is_ready(server)
    assert "example" in tables(lock_env) and "half_done" not in tables(lock_env)
    assert applied_revision(lock_env) == HEAD


def test_alembic_by_hand_from_the_project_root(
    lock_env: dict[str, str], backend_server: PostgresServer, tmp_path: Path
) -> None:
    """``alembic revision`` and ``alembic upgrade head`` with ``[tool.alembic]`` of pyproject.toml,
    the settings from the environment, and the package not installed (``prepend_sys_path``)."""
    project = tmp_path / "project"
    shutil.copytree(PROJECT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", project)
    env = service_env(lock_env)
    del env["PYTHONPATH"]

    def alembic(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "alembic", *args]
        run_env = {**env, **extra_env}
        return subprocess.run(command, cwd=project, env=run_env, capture_output=True, text=True, timeout=60)

    made = alembic("revision", "-m", "add a table")
    assert made.returncode == 0, made.stdout + made.stderr
    scripts = ScriptDirectory(str(project / MIGRATIONS.relative_to(PROJECT)))
    new = scripts.get_revision("head")
    assert new is not None and new.down_revision == HEAD
    revision = new.revision
    assert "Generating " + str(project / MIGRATIONS.relative_to(PROJECT) / "versions") in made.stdout

    bad = alembic("upgrade", "head", DATABASE_URL="mysql://app:pw@db/app")
    assert bad.returncode == 1 and "ERROR: invalid setting DATABASE_URL=<hidden>" in bad.stderr, bad.stderr

    wrong = f"postgresql://intruder:{quote(SENTINEL, safe='')}@127.0.0.1:{backend_server.port}/postgres"
    refused = alembic("upgrade", "head", DATABASE_URL=wrong)
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr
    assert_no_secret(refused.stdout + refused.stderr, SENTINEL, quote(SENTINEL, safe=""))

    upgraded = alembic("upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert f"Running upgrade {HEAD} -> {revision}, add a table" in upgraded.stderr
    assert applied_revision(lock_env) == revision and "example" in tables(lock_env)
