"""Small helpers shared by the fixtures and the tests: free ports, process liveness, polling, and
several instances of the service sharing one lock scope."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Server

DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        # It exited (and was reaped) since kill(0); or there is no /proc (not Linux): trust kill(0).
        return not Path("/proc/self/stat").exists()
    return state != "Z"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """``wait_until`` for code running in an event loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def run_scenario(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an in-process scenario in a fresh event loop, with a deadline that catches a hang."""
    asyncio.run(asyncio.wait_for(scenario(), 30))


def assert_one_primary_at_a_time(events: list[tuple[int, bool]]) -> None:
    """Replay role changes in the order they happened: nobody becomes primary while another is."""
    current: set[int] = set()
    for pid, primary in events:
        if primary:
            assert not current - {pid}, f"pid {pid} became primary while {current} still was"
            current.add(pid)
        else:
            current.discard(pid)


def both_instances(
    start_server: Callable[..., Server], kind: str = "uvicorn", **options: Any
) -> tuple[Server, Server]:
    """Two servers (two uvicorn or gunicorn masters, 2 workers each, as two containers or hosts would
    be) in one lock scope: the same lock file (containers sharing its volume), or the same Redis or
    database and key prefix."""
    return start_server(kind, workers=2, **options), start_server(kind, workers=2, **options)


def primaries(*servers: Server) -> set[int]:
    return set().union(*(server.primaries() for server in servers))


def single_primary(*servers: Server, timeout: float = DEADLINE) -> int:
    """Wait until exactly one live worker of all ``servers`` is primary; return it."""
    found: set[int] = wait_until(
        lambda: (p := primaries(*servers)) and len(p) == 1 and p, "one primary", timeout
    )
    return next(iter(found))


def owner_of(pid: int, *servers: Server) -> Server:
    """The server whose worker ``pid`` is."""
    return next(server for server in servers if pid in server.worker_pids())


def merged_events(*servers: Server) -> list[tuple[int, bool]]:
    """Role changes of several instances, in the order the tests read them."""
    timed = sorted(
        (when, event)
        for server in servers
        for event, when in zip(server.events, server.event_times, strict=True)
    )
    return [event for _, event in timed]


def wait_until_every_worker_is_ready(server: Server, timeout: float = 60) -> None:
    """Wait until every live worker of ``server`` answers ``GET /health/ready`` with "ready"."""

    def all_ready() -> bool:
        answers = server.answers_from_every_worker("/health/ready")
        return all(answer["status"] == "ready" for answer in answers.values())

    wait_until(all_ready, "every worker to be ready", timeout)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl (for TLS servers of the tests)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
    ]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    return cert, key


SENTINEL = "s3ntinel-Pa55#w0rd!"
"""A secret the tests hand the service (as a password), then search every output for."""


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        where = text.find(secret)
        assert where < 0, f"the secret {secret!r} was written: {text[max(0, where - 200) : where + 200]}"
