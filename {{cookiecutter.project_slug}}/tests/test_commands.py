"""The command line (the launcher, status, demo) and start-up errors for bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import uvicorn

from {{ cookiecutter.package_name }} import jobs as service_jobs
from {{ cookiecutter.package_name }}.__main__ import main as launcher_main
from {{ cookiecutter.package_name }}.config import SECRET_SETTINGS
from {{ cookiecutter.package_name }}.coordination import Schedule, make_lock
from {{ cookiecutter.package_name }}.coordination import jobs as coordination_jobs

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
from contract import BAD_SETTINGS, scope_footprint
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


def test_status_with_a_bad_setting_exits_3_with_one_line(lock_env: dict[str, str]) -> None:
    result = run_command(lock_env, "status", LOG_LEVEL="LOUD")
    assert result.returncode == 3
    assert result.stderr.startswith("ERROR: invalid setting LOG_LEVEL='LOUD': ")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_status_before_any_worker_ran_exits_1(lock_env: dict[str, str]) -> None:
    result = run_command(lock_env, "status")
    assert result.returncode == 1
    assert f"no primary: nobody holds the {location(lock_env)}" in result.stderr


def test_demo_prints_one_primary_and_a_failover_in_a_scope_of_its_own(lock_env: dict[str, str]) -> None:
    before = scope_footprint(lock_env)

    result = run_command(lock_env, "demo", "--workers", "4")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Demo election on the ") and lines[0].endswith("(a scope of its own)")
    assert sum("I am PRIMARY" in line for line in lines) == 1
    assert sum("I am SECONDARY" in line for line in lines) == 3
    assert "took over in" in lines[-1]
    # It never touched the service's lock scope, and left nothing behind in its own.
    assert scope_footprint(lock_env) == before


def test_demo_needs_two_workers(lock_env: dict[str, str]) -> None:
    result = run_command(lock_env, "demo", "--workers", "1")
    assert result.returncode == 2 and "--workers must be at least 2" in result.stderr


STARTUP_CASES = [("LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"), *BAD_SETTINGS]
"""A setting of the service's own, then each of the lock backend's (variable, value, message)."""


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    STARTUP_CASES,
)
def test_bad_setting_stops_the_server_with_one_clear_line(
    lock_env: dict[str, str], kind: str, variable: str, value: str, message: str
) -> None:
    argv = (uvicorn_argv if kind == "uvicorn" else gunicorn_argv)(free_port(), 2)
    env = service_env(lock_env, **{variable: value})

    # The server stops by itself (a timeout here means it restarts the broken worker forever).
    result = subprocess.run(argv, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)

    # gunicorn: "worker failed to boot", exit 3 (or 1, when the worker fails before gunicorn's
    # main loop runs). uvicorn's supervisor stops too, but exits 0: the README says so and points
    # to the launcher (next test), which exits 3.
    assert result.returncode != 0 if kind == "gunicorn" else result.returncode == 0
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


def launcher(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", PACKAGE, *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    STARTUP_CASES,
)
def test_launcher_refuses_a_bad_setting_with_exit_3_before_any_worker_starts(
    lock_env: dict[str, str], variable: str, value: str, message: str
) -> None:
    result = launcher("--workers", "2", env=service_env(lock_env, **{variable: value}))

    assert result.returncode == 3
    shown = "<hidden>" if variable in SECRET_SETTINGS else repr(value)
    assert result.stderr == f"ERROR: invalid setting {variable}={shown}: {result.stderr.split(': ', 2)[2]}"
    assert message in result.stderr and result.stdout == ""  # one line, and no server ever started


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--workers", "0", "WORKERS='0': must be a whole number from 1 to 256"),
        ("--port", "http", "PORT='http'"),
    ],
)
def test_launcher_refuses_a_bad_flag_with_exit_3(
    lock_env: dict[str, str], flag: str, value: str, message: str
) -> None:
    result = launcher(flag, value, env=service_env(lock_env))
    assert result.returncode == 3 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_launcher_refuses_a_bad_job_declaration_with_exit_3(
    lock_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Instead of workers that fail on it and are restarted for ever. (In process: a schedule from
    the settings that never fires, as a stand-in for any mistake the decorators refuse.)"""
    for name, value in service_env(lock_env).items():
        monkeypatch.setenv(name, value)
    never = (service_jobs.report, lambda _: Schedule("0 0 30 2 *"))
    monkeypatch.setitem(coordination_jobs._scheduled, "never", never)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("a server was started"))

    assert launcher_main([]) == 3
    assert "ERROR: bad job declaration in " in capsys.readouterr().err


@pytest.mark.parametrize("source", ["flags", "environment"])
def test_launcher_runs_the_workers_and_stops_cleanly(
    lock_env: dict[str, str], tmp_path: Path, source: str
) -> None:
    port = free_port()
    if source == "flags":
        argv, env = ["--host", "127.0.0.1", "--port", str(port), "--workers", "3"], service_env(lock_env)
    else:
        argv, env = [], service_env(lock_env, HOST="127.0.0.1", PORT=str(port), WORKERS="3")
    server = Server([sys.executable, "-m", PACKAGE, *argv], env, port, workers=3)
    try:
        server.wait_until_started()
        primary = server.wait_for_primary()
        assert server.get("/health/worker").json()["holder"]["pid"] == primary
        assert server.stop() == 0
        assert current_holder(lock_env) is None
        server.assert_never_two_primaries()
    finally:
        server.stop()
