"""What the backend contract suite needs from the PostgreSQL backend: a PostgreSQL server of the tests'
own (which the fault tests kill, pause and restart), its lock scopes and its faults.

Every backend has a module like this one (``backend_<name>.py``) with the same names; ``conftest.py``
takes them from the module of the backend this project was generated with.

The server is a cluster of its own, made with ``initdb`` in a temporary directory and started with
``postgres`` on a free loopback port: the tests never use a PostgreSQL server they did not start.
The binaries come from PATH, ``pg_config --bindir`` or ``/usr/lib/postgresql/*/bin`` (Debian
and Ubuntu keep them out of PATH: ``apt install postgresql``), or else from the ``pgserver`` dev
dependency, which ships them (Linux, Python 3.11 and 3.12). PostgreSQL refuses to run as root, so
under root the cluster runs as the ``postgres`` user that the distribution's package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import PrimaryLock, make_lock

from support import free_port, wait_until

BACKEND = "postgres"
FAILS_OVER_AT_ONCE = True
"""When the crashed primary was a worker of the same server (the same host and pid namespace), its
standbys prove it dead and take over at once, before the server has replaced it (``lease.py``). A
primary on another host or in another container is waited out: its lease must run out first."""
BAD_SETTINGS = [
    ("DATABASE_URL", "mysql://u:pw@db/app", "invalid setting DATABASE_URL=<hidden>: must be a postgresql://"),
    (
        "DATABASE_URL",
        "postgresql://u:pw@db/app?no_such_option=1",
        "invalid setting DATABASE_URL=<hidden>: must be a postgresql://",
    ),
    ("LOCK_KEY_PREFIX", "My-Service", "invalid setting LOCK_KEY_PREFIX='My-Service': must be 1 to 40"),
    ("LOCK_TTL_SECONDS", "nan", "invalid setting LOCK_TTL_SECONDS='nan': must be a number from 1 to 300"),
    ("LOCK_RETRY_SECONDS", "1e-9", "invalid setting LOCK_RETRY_SECONDS='1e-9': must be a number from 0.05"),
]
"""(variable, bad value, the start of the one line that refuses it) for each setting of the backend."""

SUPERUSER = "postgres"
"""The cluster's superuser, trusted on 127.0.0.1 (no password); roles made by the tests need theirs."""


def postgres_binary(name: str) -> str:
    """``initdb`` or ``postgres``: from PATH, ``pg_config --bindir``, Debian's and Ubuntu's
    ``/usr/lib/postgresql/<version>/bin`` (newest first), or the ``pgserver`` dev dependency."""
    if found := shutil.which(name):
        return found
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(bindir.stdout.strip()) / name
        if candidate.exists():
            return str(candidate)
    versions = Path("/usr/lib/postgresql").glob(f"*/bin/{name}")
    if debian := sorted(versions, key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0):
        return str(debian[-1])
    with contextlib.suppress(ImportError):
        import pgserver  # type: ignore[import-untyped,unused-ignore]

        candidate = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(f"no {name} in PATH, pg_config, /usr/lib/postgresql or pgserver; install PostgreSQL")


def server_account() -> dict[str, Any]:
    """Popen arguments that run the server as the ``postgres`` user when the tests run as root."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("PostgreSQL refuses to run as root and there is no postgres user") from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


class PostgresServer:
    """One PostgreSQL cluster of the tests' own, on a free loopback port, in a temporary directory.

    ``kill`` is a crash (SIGKILL to the postmaster and every backend; Linux), ``pause`` freezes them all
    (SIGSTOP), ``restart`` is a fast shutdown and start. The data survives all of them, as it does
    on a real server.
    """

    def __init__(self, port: int | None = None) -> None:
        # Not under pytest's tmp_path: that lies in a directory only root may enter.
        self.directory = Path(tempfile.mkdtemp(prefix="pg-tests-"))
        self.data = self.directory / "data"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        account = server_account()
        if account:
            os.chown(self.directory, account["user"], account["group"])
        initdb = [postgres_binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust"]
        initdb += ["--no-sync", "-E", "UTF8", "--locale=C"]
        subprocess.run(initdb, check=True, capture_output=True, **account)
        # The superuser is trusted; any other role must give its password (the wrong-password test).
        (self.data / "pg_hba.conf").write_text(
            f"local all all trust\nhost all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, user: str, password: str, database: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        argv = [postgres_binary("postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}"]
        argv += ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=300"]
        argv += ["-c", "shared_buffers=16MB"]
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=log, start_new_session=True, **server_account()
        )
        process = self.process
        wait_until(lambda: process.poll() is not None or self._answers(), f"PostgreSQL on {self.port}", 30)
        if process.poll() is not None:
            tail = (self.directory / "server.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"PostgreSQL did not start on port {self.port}:\n{tail}")

    def _answers(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _signal_all(self, signum: int) -> None:
        """Signal the postmaster and every backend (each backend is a session of its own, so one
        process group does not reach them: they are found as the postmaster's children)."""
        assert self.process is not None
        postmaster = self.process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
        for pid in [postmaster, *children]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill(self) -> None:
        """A crash of the server and all its sessions (the data stays; the next start recovers it)."""
        assert self.process is not None
        self.resume()
        self._signal_all(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """A fast shutdown: every session is ended, then the server stops."""
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._signal_all(signal.SIGCONT)
            self.paused = False

    def ensure_running(self) -> None:
        """Undo what a previous test did to the server."""
        self.resume()
        if self.process is None or self.process.poll() is not None:
            self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection (autocommit), for setting up and inspecting what the tests need."""
        return psycopg.connect(
            f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}", autocommit=True, connect_timeout=5
        )

    def create_role(self, name: str, password: str, *options: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + " ".join(options))
            conn.execute(statement.format(sql.Identifier(name), sql.Literal(password)))


@pytest.fixture(scope="session")
def backend_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the tests' own, on a free port (never one that happens to be running)."""
    server = PostgresServer()
    yield server
    server.remove()


def new_prefix() -> str:
    return f"test_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fresh_lock_env(backend_server: PostgresServer) -> dict[str, str]:
    """A lock scope the database has never heard of: its first holder waits out any lease it cannot know."""
    backend_server.ensure_running()
    return {"DATABASE_URL": backend_server.url, "LOCK_KEY_PREFIX": new_prefix(), "LOCK_TTL_SECONDS": "3"}


@pytest.fixture
def lock_env(backend_server: PostgresServer) -> dict[str, str]:
    """The lock scope of one test: a private prefix on the tests' server, a short ttl, and a holder
    record that says its last holder released the lock (a scope in use, not a new one: otherwise
    every test would start with the first holder's wait)."""
    env = {"DATABASE_URL": backend_server.url, "LOCK_KEY_PREFIX": new_prefix(), "LOCK_TTL_SECONDS": "3"}
    backend_server.ensure_running()
    mark_released(env)
    return env


def mark_released(lock_env: dict[str, str]) -> None:
    """Create the scope's tables (as the service would) with a record of a released lock."""
    from {{ cookiecutter.package_name }}.coordination.postgres_lock import schema, table_names

    record, _ = table_names(lock_env["LOCK_KEY_PREFIX"])
    with psycopg.connect(lock_env["DATABASE_URL"], autocommit=True) as conn:
        with conn.transaction():
            for statement in schema(lock_env["LOCK_KEY_PREFIX"]):
                conn.execute(statement)
        conn.execute(
            sql.SQL("INSERT INTO {} (id, state) VALUES (1, 'released')").format(sql.Identifier(record))
        )


async def take_over_behind_its_back(settings: Settings) -> PrimaryLock:
    """Make a new lock the holder while the current holder still believes it holds the lock.

    The holder's session ends under it (``pg_terminate_backend``, a restarted connection pooler, a
    network split), which frees its advisory lock before its next renewal; the record says it was
    released, and a second worker takes the lock.
    """
    from {{ cookiecutter.package_name }}.coordination.postgres_lock import table_names

    record, _ = table_names(settings.lock_key_prefix)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        query = sql.SQL("SELECT pg_terminate_backend(backend_pid, 5000) FROM {} WHERE id = 1")
        assert conn.execute(query.format(sql.Identifier(record))).fetchone() == (True,)
        conn.execute(sql.SQL("UPDATE {} SET state = 'released'").format(sql.Identifier(record)))
    successor = make_lock(settings)
    assert await successor.try_acquire()
    return successor


def vanish(settings: Settings) -> None:
    """Take the lock away from its holder behind its back, with nobody in its place: the holder
    record is deleted by hand (the holder's session, and so its advisory lock, stay)."""
    from {{ cookiecutter.package_name }}.coordination.postgres_lock import table_names

    record, _ = table_names(settings.lock_key_prefix)
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        assert conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(record))).rowcount == 1


def unusable_lock_env(tmp_path: Path) -> dict[str, str]:
    """A lock scope that cannot even be attempted: a PostgreSQL that nobody runs."""
    return {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"}


def scope_footprint(lock_env: dict[str, str]) -> list[str]:
    """What exists of the lock scope of ``lock_env``: its tables (and any of a derived prefix)."""
    with psycopg.connect(lock_env["DATABASE_URL"], autocommit=True) as conn:
        query = "SELECT tablename FROM pg_tables WHERE starts_with(tablename, %s) ORDER BY 1"
        return [name for (name,) in conn.execute(query, (lock_env["LOCK_KEY_PREFIX"],))]
