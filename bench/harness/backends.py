"""The three lock backends side by side: the server each needs (started the way the generated tests
start theirs: ``backend_redis.RedisServer``, ``backend_postgres.PostgresServer``), a fresh lock scope
per server under measurement, and the backend's own faults for the soak."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from .project import PACKAGE, project_env
from .servers import BenchServer

LEASE_TTL = "3"  # LOCK_TTL_SECONDS of the lease backends in every measurement that sets one


class Backend:
    """One baked project and what its lock needs. ``ttl`` is the LOCK_TTL_SECONDS to run with
    (None: the backend has none, or the default)."""

    name = ""
    lease = False  # a lease with a ttl (redis, postgres) rather than a lock the kernel drops
    faults: tuple[str, ...] = ()  # the backend's own soak faults (see soak.py)

    def __init__(self, project: Path, tmp: Path) -> None:
        self.project, self.tmp = project, tmp

    def scope(self, label: str) -> dict[str, str]:
        """The settings of a new lock scope nobody has used."""
        raise NotImplementedError

    def env(self, label: str, ttl: str | None = None, **extra: str) -> dict[str, str]:
        settings = self.scope(label)
        if ttl is not None and self.lease:
            settings["LOCK_TTL_SECONDS"] = ttl
        return project_env(self.project, **settings, **extra)

    def server(self, label: str, ttl: str | None = None, app: str = f"{PACKAGE}.api:app", **extra: str) -> BenchServer:
        return BenchServer(f"{self.name}-{label}", app, self.env(label, ttl, **extra))

    def fault(self, kind: str) -> dict[str, Any]:
        raise ValueError(kind)

    def stop(self) -> None:
        pass


class FileBackend(Backend):
    name = "file"

    def scope(self, label: str) -> dict[str, str]:
        return {"LOCK_PATH": str(self.tmp / "locks" / f"{label}-{uuid.uuid4().hex[:6]}" / "primary.lock")}


class RedisBackend(Backend):
    """A redis-server of our own (the tests' RedisServer); ``persist`` runs it with appendonly yes,
    as the generated docker-compose.yml does."""

    name = "redis"
    lease = True
    faults = ("redis_restart",)

    def __init__(self, project: Path, tmp: Path, persist: bool = False) -> None:
        from backend_redis import RedisServer

        super().__init__(project, tmp)
        self.persist = persist
        extra = ("--appendonly", "yes") if persist else ()  # later options win over RedisServer's "no"
        directory = tmp / f"redis-{uuid.uuid4().hex[:6]}"
        directory.mkdir()  # RedisServer takes a directory that exists (the tests' tmp_path)
        self.service = RedisServer(directory, *extra)

    def scope(self, label: str) -> dict[str, str]:
        return {"REDIS_URL": self.service.url, "LOCK_KEY_PREFIX": f"{label}-{uuid.uuid4().hex[:6]}"}

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.service.port, socket_timeout=2)

    def fault(self, kind: str) -> dict[str, Any]:
        assert kind == "redis_restart"
        self.service.kill()  # a crash: kill -9, then a start on the same port
        self.service.start()
        return {}

    def stop(self) -> None:
        self.service.stop()


class PostgresBackend(Backend):
    """A PostgreSQL cluster of our own (the tests' PostgresServer: initdb + postgres on a free port)."""

    name = "postgres"
    lease = True
    faults = ("postgres_restart", "terminate_holder_session")

    def __init__(self, project: Path, tmp: Path) -> None:
        from backend_postgres import PostgresServer

        super().__init__(project, tmp)
        self.service = PostgresServer()
        self.prefixes: list[str] = []

    def scope(self, label: str) -> dict[str, str]:
        prefix = f"{label.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
        self.prefixes.append(prefix)
        return {"DATABASE_URL": self.service.url, "LOCK_KEY_PREFIX": prefix}

    def fault(self, kind: str) -> dict[str, Any]:
        if kind == "postgres_restart":
            self.service.kill()  # a crash of the server and every session; the data survives
            self.service.start()
            return {}
        assert kind == "terminate_holder_session"
        # What a network cut, an idle timeout or an admin does: the holder's session ends under it.
        terminated = []
        with self.service.admin() as conn:
            for prefix in self.prefixes:
                row = conn.execute(
                    f'SELECT backend_pid, pg_terminate_backend(backend_pid, 5000) FROM "{prefix}_primary"'
                    " WHERE id = 1 AND state = 'held' AND backend_pid <> 0"
                ).fetchone()
                if row:
                    terminated.append(row[0])
        return {"backend_pids": terminated}

    def queries(self) -> int:
        """Transactions committed in the database so far (pg_stat_database), for the standby cost."""
        with self.service.admin() as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'").fetchone()
            return int(row[0])

    def stop(self) -> None:
        self.service.remove()


def make_backend(name: str, project: Path, tmp: Path, **options: Any) -> Backend:
    if name == "file":
        return FileBackend(project, tmp)
    if name == "redis":
        return RedisBackend(project, tmp, persist=options.get("persist", False))
    return PostgresBackend(project, tmp)
