"""One primary among real worker processes, and live failover (uvicorn and gunicorn)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import httpx
import pytest

from conftest import PACKAGE, Server, current_holder, service_env
from contract import BACKEND, FAILS_OVER_AT_ONCE
from support import free_port, is_alive, wait_until

SERVERS = [
    pytest.param("uvicorn", (), id="uvicorn"),
    pytest.param("gunicorn", (), id="gunicorn"),
    pytest.param("gunicorn", ("--preload",), id="gunicorn-preload"),
]


@pytest.mark.parametrize(("kind", "extra"), SERVERS)
def test_four_workers_elect_exactly_one_primary(
    start_server: Callable[..., Server], lock_env: dict[str, str], kind: str, extra: tuple[str, ...]
) -> None:
    server = start_server(kind, workers=4, extra=extra)
    workers = server.wait_until_started()
    primary = server.wait_for_primary()

    assert len(workers) == 4
    assert httpx.head(f"http://127.0.0.1:{server.port}/health").status_code == 200
    holder = current_holder(lock_env)
    assert holder is not None and holder.pid == primary
    # Every one of the four workers answers, and agrees on who holds the lock.
    answers = server.answers_from_every_worker()
    assert set(answers) == workers
    for answer in answers.values():
        assert answer["holder"]["pid"] == primary
        assert answer["role"] == ("primary" if answer["pid"] == primary else "standby")
        assert answer["backend"] == BACKEND
        assert answer["lock_error"] is None
        assert answer["epoch"] >= 1
    server.assert_never_two_primaries()


@pytest.mark.parametrize(("kind", "extra"), SERVERS)
def test_standby_takes_over_after_kill_9_before_any_restart(
    start_server: Callable[..., Server], kind: str, extra: tuple[str, ...]
) -> None:
    server = start_server(kind, workers=4, extra=extra)
    standbys = server.wait_until_started()
    primary = server.wait_for_primary()
    standbys.discard(primary)

    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)

    # A backend that fails over at once (the file lock: the kernel drops a dead holder's lock; a
    # lease: the standbys prove that a worker of their own server died) makes one of the workers
    # that were already running primary, not the replacement the server starts for the dead worker.
    new_primary = server.wait_for_primary(timeout=10, among=standbys if FAILS_OVER_AT_ONCE else None)
    assert new_primary != primary
    server.assert_never_two_primaries()


def slow_exit_app(kind: str) -> dict[str, object]:
    """Server arguments for ``apps.slow_exit_app``, a factory (uvicorn ``--factory``, gunicorn ``()``)."""
    if kind == "uvicorn":
        return {"app": "apps:slow_exit_app", "extra": ("--factory",)}
    return {"app": "apps:slow_exit_app()"}


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize("slow_exit", [False, True], ids=["plain", "slow-primary"])
def test_graceful_reload_ends_with_exactly_one_primary(
    start_server: Callable[..., Server], kind: str, slow_exit: bool
) -> None:
    options = slow_exit_app(kind) if slow_exit else {}
    server = start_server(kind, workers=4, env={"SLOW_EXIT_SECONDS": "2"}, **options)
    old_workers = server.wait_until_started()
    old_primary = server.wait_for_primary()

    server.signal(signal.SIGHUP)

    # The reload is over when every old worker has exited and four new ones are up.
    wait_until(lambda: not any(is_alive(pid) for pid in old_workers), "the old workers to exit", 60)
    wait_until(lambda: len(server.live_workers()) == 4, "four new workers")
    new_primary = server.wait_for_primary(among=server.live_workers())
    assert new_primary != old_primary
    assert new_primary not in old_workers
    server.assert_never_two_primaries()


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_sigterm_stops_cleanly_and_releases_the_lock(
    start_server: Callable[..., Server], lock_env: dict[str, str], kind: str
) -> None:
    server = start_server(kind, workers=3)
    server.wait_for_primary()

    assert server.stop() == 0

    assert current_holder(lock_env) is None  # released, not left to expire
    # Stopping standbys do not take the lock on their way out: one handover-free shutdown.
    assert [primary for _, primary in server.events].count(True) == 1
    server.assert_never_two_primaries()


def test_gunicorn_conf_py_starts_the_service_with_its_workers(lock_env: dict[str, str]) -> None:
    """The shipped gunicorn.conf.py, as the README runs it (settings from BIND and WORKERS)."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", f"{PACKAGE}.api:app"]
    env = service_env(lock_env, BIND=f"127.0.0.1:{port}", WORKERS="3")
    server = Server(argv, env, port, workers=3)
    try:
        workers = server.wait_until_started()
        primary = server.wait_for_primary()
        assert len(workers) == 3 and primary in workers
        assert server.stop() == 0
        assert current_holder(lock_env) is None
        server.assert_never_two_primaries()
    finally:
        server.stop()
