"""The command line (status, demo) and start-up errors for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import SECRET_SETTINGS, Settings
from {{ cookiecutter.package_name }}.coordination import make_lock

from conftest import (
    PACKAGE,
    PROJECT,
    Server,
    current_holder,
    gunicorn_argv,
    service_env,
    settings_from,
    uvicorn_argv,
)
from support import free_port, wait_until


def run_command(lock_env: dict[str, str], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", *args],
        cwd=PROJECT,
        env=service_env(lock_env, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )


def location(lock_env: dict[str, str]) -> str:
    return make_lock(settings_from(lock_env)).location


def test_status_names_the_primary_while_the_service_runs(
    start_server: Callable[..., Server], lock_env: dict[str, str]
) -> None:
    server = start_server("uvicorn", workers=3)
    primary = server.wait_for_primary()

    result = run_command(lock_env, "status")

    assert result.returncode == 0, result.stderr
    assert f"primary: pid={primary} " in result.stdout
    assert location(lock_env) in result.stdout

    server.stop()
    result = run_command(lock_env, "status")
    assert result.returncode == 1
    assert f"no primary: nobody holds the {location(lock_env)}" in result.stderr


def test_status_before_any_worker_ran_exits_1(lock_env: dict[str, str]) -> None:
    result = run_command(lock_env, "status")
    assert result.returncode == 1
    assert f"no primary: nobody holds the {location(lock_env)}" in result.stderr


def test_demo_prints_one_primary_and_a_failover(lock_env: dict[str, str]) -> None:
    result = run_command(lock_env, "demo", "--workers", "4")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum("I am PRIMARY" in line for line in lines) == 1
    assert sum("I am SECONDARY" in line for line in lines) == 3
    assert "took over in" in lines[-1]
    assert current_holder(lock_env) is None  # the demo uses a lock of its own, never the service's


BAD_SETTINGS = [
    ("LOCK_RETRY_SECONDS", "soon", "valid number"),
    ("LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("LOCK_PATH", "relative/primary.lock", "must be an absolute path"),
    ("REDIS_URL", "http://localhost:6379", "must be a redis://, rediss:// or unix:// URL"),
    ("LOCK_TTL_SECONDS", "0.5", "greater than or equal to 1"),
]


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [case for case in BAD_SETTINGS if case[0].lower() in Settings.model_fields],  # this backend's
)
def test_bad_setting_stops_the_server_with_one_clear_line(
    lock_env: dict[str, str], kind: str, variable: str, value: str, message: str
) -> None:
    argv = (uvicorn_argv if kind == "uvicorn" else gunicorn_argv)(free_port(), 2)
    env = service_env(lock_env, **{variable: value})

    # The server stops by itself (a timeout here means it restarts the broken worker forever).
    result = subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)

    if kind == "gunicorn":
        assert result.returncode != 0  # gunicorn: "worker failed to boot"; uvicorn's parent exits 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: invalid setting")]
    assert errors, result.stderr
    shown = "<hidden>" if variable in SECRET_SETTINGS else repr(value)  # a URL may carry a password
    assert all(f"{variable}={shown}" in line and message in line for line in errors)
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
