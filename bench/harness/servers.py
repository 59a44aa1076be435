"""The uvicorn server under measurement: the generated tests' ``conftest.Server`` with a name, read
times of the epoch lines, the times of our own kills, and its log kept when it stops."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import free_port, is_alive, wait_until

import conftest

# The line a new primary logs with its epoch (the second form since the singleton jobs of jobs.py).
EPOCH_LINE = re.compile(
    r"(?:Startup task done: migration ran on the primary|Singleton jobs start on the primary) \(pid=(\d+), epoch=(\d+)\)"
)
LOG_DIR: Path | None = None  # set by run.py: where each stopped server's log is written


def now() -> float:
    return time.monotonic()


def within(condition: Callable[[], Any], timeout: float) -> Any:
    """``support.wait_until`` that returns None at the deadline instead of failing: a trial without
    a new primary is a result ("none"), not an error."""
    try:
        return wait_until(condition, "a benchmark condition", timeout)
    except AssertionError:
        return None


class BenchServer(conftest.Server):
    """``python -m uvicorn <app> --workers N`` in its own session, read as the generated tests read it.

    The tests' ``Server`` already stamps each role line with ``time.monotonic()`` when its reader
    thread reads it (``event_times``); every latency here is a difference of such read times, or of
    a read time and the moment this process sent a signal. Only the reader is overridden: it also
    keeps the epoch lines with their read times (the soak matches epochs to primary intervals).
    """

    def __init__(
        self,
        name: str,
        app: str,
        env: dict[str, str],
        workers: int = 4,
        extra: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
    ) -> None:
        """``wrapper``: a command that runs the server, e.g. ``unshare --pid --fork`` (another pid
        namespace, as another container would be)."""
        self.name = name
        self.epochs: list[tuple[float, int, int]] = []  # (read time, pid, epoch)
        self.killed: dict[int, float] = {}  # pid -> when this process sent it SIGKILL
        self.started_at = now()
        port = free_port()
        argv = [*wrapper, *conftest.uvicorn_argv(port, workers, "--no-access-log", *extra, app=app)]
        super().__init__(argv, env, port, workers)

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            seen = now()  # taken as the line is read, before waiting for the lock
            with self._changed:
                self.lines.append(line)
                if match := conftest.ROLE_LINE.search(line):
                    self.events.append((int(match[1]), match[2] == "True"))
                    self.event_times.append(seen)
                elif match := EPOCH_LINE.search(line):
                    self.epochs.append((seen, int(match[1]), int(match[2])))

    # -- what the log tells, with read times -------------------------------------------------

    def timed_events(self) -> list[tuple[float, int, bool]]:
        """(read time, pid, primary) of every role line."""
        with self._changed:
            return [(t, pid, primary) for (pid, primary), t in zip(self.events, self.event_times)]

    def roles(self) -> dict[int, bool]:
        """The latest logged role of every worker that logged one."""
        with self._changed:
            return dict(self.events)

    def line_after(
        self, since: float, primary: bool, exclude: frozenset[int] | set[int] = frozenset(), only: int | None = None
    ) -> float | None:
        """Read time of the first role line (primary or not) read at or after ``since``, of a pid
        not in ``exclude`` (or only of ``only``)."""
        return next(
            (
                t
                for t, pid, p in self.timed_events()
                if p == primary and t >= since and pid not in exclude and (only is None or pid == only)
            ),
            None,
        )

    def promotion_after(self, since: float, exclude: set[int]) -> float | None:
        return self.line_after(since, True, exclude)

    def steady(self, timeout: float = 30.0) -> int | None:
        """Wait until ``workers`` live workers and exactly one live primary; return the primary."""

        def check() -> int | None:
            primaries = self.primaries()
            if len(primaries) == 1 and len(self.live_workers()) >= self.workers:
                return next(iter(primaries))
            return None

        return within(check, timeout)

    # -- doing things to it --------------------------------------------------------------------

    def kill(self, pid: int, signum: int = signal.SIGKILL) -> float:
        t = now()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if signum == signal.SIGKILL:
            self.killed[pid] = t
        return t

    def hup(self) -> float:
        t = now()
        self.signal(signal.SIGHUP)
        return t

    def stop(self, timeout: float = 20.0) -> int:  # type: ignore[override]
        """The tests' stop (SIGTERM, then SIGKILL to the group), never raising on a slow stop; the
        whole log is kept as evidence (bench/results/logs/)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            super().stop(timeout)
        if LOG_DIR is not None:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            (LOG_DIR / f"{self.name}-{self.port}.log").write_text(self.output())
        return self.process.returncode if self.process.returncode is not None else -1


def start_steady(make: Callable[[], BenchServer], timeout: float = 40.0) -> BenchServer:
    """Start a server (on another free port if its port was taken meanwhile) and wait for 4 live
    workers and one primary."""
    for _ in range(3):
        server = make()
        if server.steady(timeout) is not None:
            return server
        server.stop()
        if not server.port_was_taken():
            raise RuntimeError(f"{server.name}: no steady state after start\n{server.output()[-3000:]}")
    raise RuntimeError("three free ports in a row were taken")


def gone(pid: int) -> bool:
    return not is_alive(pid)
