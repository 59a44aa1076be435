"""Fixtures that run the service the way production does: a real server with real worker processes.

Nothing here is mocked. Tests start uvicorn or gunicorn on a free port with a private lock file,
read the workers' log lines as they are written, and poll with deadlines (never fixed sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gunicorn.config import KNOWN_SETTINGS

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import Holder, make_lock

from mail_sink import MailSink
from support import DEADLINE, assert_one_primary_at_a_time, free_port, is_alive, wait_until

pytest_plugins = ["contract"]  # the lock backend's fixtures (lock_env, backend_server, ...)

PACKAGE = "{{ cookiecutter.package_name }}"
PROJECT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ROLE_LINE = re.compile(r"Worker (?:startup|role change): pid=(\d+), primary=(True|False)")


def service_env(lock_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The environment of a server under test: the package importable, a private lock, fast retries."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOCK_", "REDIS_", "DATABASE_"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(PROJECT / "src"), str(TESTS), env.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        LOCK_RETRY_SECONDS="0.2",
    )
    env.update(lock_env)
    env.update(overrides)
    return env


def settings_from(lock_env: dict[str, str]) -> Settings:
    """The settings a server started with ``lock_env`` uses (ignoring this process's environment)."""
    return Settings.model_validate({key.lower(): value for key, value in lock_env.items()})


def current_holder(lock_env: dict[str, str]) -> Holder | None:
    """Who holds the lock of ``lock_env`` now, asked the way the status command asks."""

    async def read() -> Holder | None:
        lock = make_lock(settings_from(lock_env))
        try:
            return await lock.read_holder()
        finally:
            await lock.close()

    return asyncio.run(read())


def status_output(lock_env: dict[str, str], **env: str) -> str:
    """What ``python -m <package>.coordination status`` prints (stdout and stderr) for ``lock_env``."""
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", "status"],
        env=service_env(lock_env, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


class Server:
    """A server master process (own process group) and the role changes its workers log."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, workers: int) -> None:
        self.port = port
        self.workers = workers
        self.lines: list[str] = []
        self.events: list[tuple[int, bool]] = []  # (pid, primary) in the order they were logged
        self.event_times: list[float] = []  # when the test read each event (time.monotonic)
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            argv,
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                match = ROLE_LINE.search(line)
                if match:
                    self.events.append((int(match[1]), match[2] == "True"))
                    self.event_times.append(time.monotonic())

    # -- what the log tells --------------------------------------------------------------------

    def worker_pids(self) -> set[int]:
        with self._changed:
            return {pid for pid, _ in self.events}

    def live_workers(self) -> set[int]:
        return {pid for pid in self.worker_pids() if is_alive(pid)}

    def primaries(self) -> set[int]:
        """Live workers whose latest logged role is primary."""
        with self._changed:
            latest = dict(self.events)
        return {pid for pid, primary in latest.items() if primary and is_alive(pid)}

    def wait_for_primary(self, timeout: float = DEADLINE, *, among: set[int] | None = None) -> int:
        """Wait until exactly one live worker (optionally: one of ``among``) is primary; return it."""

        def single_primary() -> int | None:
            primaries = self.primaries()
            if len(primaries) == 1 and (among is None or primaries <= among):
                return next(iter(primaries))
            return None

        pid: int = wait_until(single_primary, "exactly one primary", timeout)
        return pid

    def wait_until_started(self, timeout: float = DEADLINE) -> set[int]:
        """Wait until ``workers`` live workers have logged their start-up and HTTP answers."""

        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with status {self.process.returncode}")
            return len(self.live_workers()) >= self.workers

        wait_until(started, f"{self.workers} workers", timeout)
        wait_until(self._answers, "the server to answer /health", timeout)
        return self.live_workers()

    def _answers(self) -> bool:
        try:
            return self.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def port_was_taken(self) -> bool:
        """The server exited because its port was taken meanwhile (free_port() cannot reserve it)."""
        if self.process.poll() is None:
            return False
        self._reader.join(10)
        return "address already in use" in self.output().lower()

    def answers_from_every_worker(self, path: str = "/health/worker") -> dict[int, dict[str, Any]]:
        """One answer of ``path`` from each live worker (a new connection per request spreads them)."""
        answers: dict[int, dict[str, Any]] = {}

        def every_worker_answered() -> bool:
            answer = self.get(path).json()
            answers[answer["pid"]] = answer
            return self.live_workers() <= set(answers)

        # Which worker accepts a new connection is the kernel's choice: on a loaded machine a busy one
        # can lose the race for many seconds, so this waits longer than the usual deadline.
        wait_until(every_worker_answered, f"an answer from each of the {self.workers} workers", 2 * DEADLINE)
        return answers

    def wait_for_log(self, pattern: str, timeout: float = DEADLINE) -> str:
        regex = re.compile(pattern)

        def found() -> str | None:
            with self._changed:
                return next((line for line in self.lines if regex.search(line)), None)

        line: str = wait_until(found, f"a log line matching {pattern!r}", timeout)
        return line

    def note_killed(self, pid: int) -> None:
        """Record that the test kills ``pid`` now: call it right BEFORE the kill, so that a successor's
        promotion, which the log reader may read a millisecond after the kill, comes after it."""
        with self._changed:
            self.events.append((pid, False))
            self.event_times.append(time.monotonic())

    def event_time(self, pid: int, primary: bool) -> float:
        """When the test read the latest event of ``pid`` becoming primary (or standby)."""
        with self._changed:
            pairs = zip(self.events, self.event_times, strict=True)
            times = [seen for event, seen in pairs if event == (pid, primary)]
        assert times, f"no event: pid={pid} primary={primary}"
        return times[-1]

    def assert_never_two_primaries(self) -> None:
        """Replay the logged role changes: no worker may become primary while another still is.

        Demotion is logged before the lock is released and promotion after it is acquired, so the
        order of lines in the shared log pipe is the order of the real events.
        """
        with self._changed:
            events = list(self.events)
        assert_one_primary_at_a_time(events)

    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    # -- talking to it ---------------------------------------------------------------------------

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = DEADLINE) -> int:
        """Graceful stop (SIGTERM to the master); anything left is killed with its process group.

        Returns once the log is read to its end, so ``events`` holds every line the server wrote.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self._reader.join(10)


def uvicorn_argv(port: int, workers: int, *extra: str, app: str = f"{PACKAGE}.api:app") -> list[str]:
    argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    return [*argv, "--workers", str(workers), *extra]


def launcher_argv(port: int, workers: int, *extra: str, app: str = f"{PACKAGE}.api:app") -> list[str]:
    """``python -m <package>``: uvicorn with the settings checked first (it always serves ``app``)."""
    assert app == f"{PACKAGE}.api:app" and not extra, "the launcher takes no other app or flags"
    return [
        sys.executable,
        "-m",
        PACKAGE,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def gunicorn_argv(port: int, workers: int, *extra: str, app: str = f"{PACKAGE}.api:app") -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}"]
    argv += ["--worker-class", "uvicorn_worker.UvicornWorker", "--graceful-timeout", "20"]
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # gunicorn >= 25 opens one per user by default
    return [*argv, "--workers", str(workers), *extra]


@pytest.fixture
def start_server(lock_env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    """Start a server: ``start_server("uvicorn", workers=4, extra=[...], env={...})``."""
    servers: list[Server] = []

    def start(
        kind: str = "uvicorn",
        *,
        workers: int = 4,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        app: str = f"{PACKAGE}.api:app",
        wait: bool = True,
    ) -> Server:
        build = {"uvicorn": uvicorn_argv, "gunicorn": gunicorn_argv, "launcher": launcher_argv}[kind]
        for _ in range(3):  # another process may take the free port before the server binds it
            port = free_port()
            server = Server(
                build(port, workers, *extra, app=app), service_env(lock_env, **(env or {})), port, workers
            )
            servers.append(server)
            if not wait:
                return server
            try:
                server.wait_until_started()
                return server
            except AssertionError:
                if not server.port_was_taken():
                    raise
        raise AssertionError("three free ports in a row were taken before the server could bind them")

    yield start
    with contextlib.ExitStack() as stops:  # every server is stopped, even if stopping one fails
        for server in servers:
            stops.callback(print_output, server)
            stops.callback(server.stop)


@pytest.fixture
def smtp_sink() -> Iterator[MailSink]:
    sink = MailSink()
    sink.start(may_move=True)
    yield sink
    sink.stop()


def print_output(server: Server) -> None:
    """pytest shows what a test printed when it fails: the server's whole log."""
    print(f"--- output of the server on port {server.port} ---\n{server.output()}")
