"""The command line (status, demo) and start-up errors for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import (
    PACKAGE,
    PROJECT,
    Server,
    free_port,
    gunicorn_argv,
    service_env,
    uvicorn_argv,
    wait_until,
)


def run_command(lock_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", *args],
        cwd=PROJECT,
        env=service_env(lock_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_names_the_primary_while_the_service_runs(
    start_server: Callable[..., Server], lock_path: Path
) -> None:
    server = start_server("uvicorn", workers=3)
    primary = server.wait_for_primary()

    result = run_command(lock_path, "status")

    assert result.returncode == 0, result.stderr
    assert f"primary: pid={primary} " in result.stdout
    assert str(lock_path) in result.stdout

    server.stop()
    result = run_command(lock_path, "status")
    assert result.returncode == 1
    assert "no primary" in result.stderr


def test_status_without_any_lock_file_exits_1(lock_path: Path) -> None:
    result = run_command(lock_path, "status")
    assert result.returncode == 1
    assert f"no primary: nobody holds the lock file {lock_path}" in result.stderr


def test_demo_prints_one_primary_and_a_failover(lock_path: Path) -> None:
    result = run_command(lock_path, "demo", "--workers", "4")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("I am PRIMARY" in line for line in lines) == 1
    assert sum("I am SECONDARY" in line for line in lines) == 3
    assert "took over in" in lines[-1]
    assert not lock_path.exists()  # the demo uses a lock of its own, never the service's


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOCK_PATH", "relative/primary.lock", "must be an absolute path"),
        ("LOCK_RETRY_SECONDS", "soon", "valid number"),
        ("LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)
def test_bad_setting_stops_the_server_with_one_clear_line(
    lock_path: Path, kind: str, variable: str, value: str, message: str
) -> None:
    argv = (uvicorn_argv if kind == "uvicorn" else gunicorn_argv)(free_port(), 2)
    env = service_env(lock_path, **{variable: value})

    # The server stops by itself (a timeout here means it restarts the broken worker forever).
    result = subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)

    if kind == "gunicorn":
        assert result.returncode != 0  # gunicorn: "worker failed to boot"; uvicorn's parent exits 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: invalid setting")]
    assert errors, result.stderr
    assert all(f"{variable}={value!r}" in line and message in line for line in errors)
    assert "ValidationError" not in result.stderr  # one line, not pydantic's multi-line report


def test_single_worker_with_reload_is_primary_again_after_each_reload(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    source = watched / "module.py"
    source.write_text("VERSION = 1\n")
    server = start_server("uvicorn", workers=1, extra=("--reload", "--reload-dir", str(watched)), wait=False)
    server.workers = 1
    first = server.wait_for_primary()

    source.write_text("VERSION = 2\n")
    os.utime(source, (time.time() + 5, time.time() + 5))  # a clearly newer mtime, whatever the reloader

    second = wait_until(lambda: min(server.primaries() - {first}, default=None), "a reloaded primary")
    assert server.primaries() == {second}
    server.assert_never_two_primaries()
