"""Shared helpers for the template's own tests: bake with pytest-cookies, run tools, render hooks."""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: ruff lives beside the running python


def pytest_configure(config: pytest.Config) -> None:
    # pytest-cookies takes the template from --template, "." by default: make it work from any cwd.
    if config.option.template == ".":
        config.option.template = str(ROOT)


# The generated suites by how long each takes, longest first (the postgres one starts a database).
SLOWEST_GENERATED_FIRST = ["postgres", "redis", "file"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start every generated suite at once, each on a worker of its own.

    They take minutes where every other test takes seconds, so the run lasts as long as the slowest
    one started last. pytest-xdist's worksteal gives each of its N workers one consecutive slice of
    this list, then lets an idle worker take tests from the end of a busy one's slice: put one suite at
    the head of each slice, longest first (any more right after the first). Without xdist: all first.
    """

    def slowness(item: pytest.Item) -> int:
        ranks = (rank for rank, name in enumerate(SLOWEST_GENERATED_FIRST) if f"[{name}" in item.name)
        return next(ranks, len(SLOWEST_GENERATED_FIRST))

    generated = sorted((item for item in items if item.get_closest_marker("generated")), key=slowness)
    ordered = [item for item in items if not item.get_closest_marker("generated")]
    heads, start, left = [], 0, len(items)  # where each worker's slice begins: left // workers to go
    for workers in range(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 0, -1):
        heads.append(start)
        start, left = start + left // workers, left - left // workers
    positions = heads[: len(generated)] + list(range(1, 1 + len(generated) - len(heads)))
    for position, suite in sorted(zip(positions, generated, strict=True), key=lambda pair: pair[0]):
        ordered.insert(position, suite)
    items[:] = ordered


@pytest.fixture(scope="session", autouse=True)
def _rendered_hooks_in_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Cookiecutter writes every rendered hook to a temporary file it never deletes: put those under
    pytest's own temporary directory (pruned by pytest) instead of leaving them in /tmp."""
    saved, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("rendered-hooks"))
    yield
    tempfile.tempdir = saved


def run(cmd: list[str], cwd: Path, *, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command, returning its exit status and its stdout and stderr merged."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_in_own_session(cmd: list[str], cwd: Path, *, timeout: float, **env: str) -> subprocess.CompletedProcess[str]:
    """``run``, for a command that starts servers of its own (a pytest run): on a timeout it is
    interrupted (Ctrl+C: pytest tears its fixtures down, and stops the servers they started in
    sessions of their own), then its whole process group is killed, and the output so far is shown."""
    process = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        raise AssertionError(f"{' '.join(cmd)} timed out after {timeout:.0f} s:\n{output[-6000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything it left behind
    return subprocess.CompletedProcess(cmd, process.returncode, output)


def check(cmd: list[str], cwd: Path, **env: str) -> None:
    """Run a command that must succeed; a failure shows the command and its output."""
    result = run(cmd, cwd, **env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed in {cwd} ({result.returncode}):\n{result.stdout}"


def default_context(**overrides: Any) -> dict[str, Any]:
    """The answers cookiecutter would use with --no-input, then ``overrides`` set as is (no checks)."""
    context = dict(prompt_for_config(generate_context(context_file=str(ROOT / "cookiecutter.json")), no_input=True))
    context.update(overrides)
    return context


def render_hook(name: str, answers: dict[str, Any], dest: Path) -> Path:
    """Render hooks/<name>.py the way cookiecutter does, into ``dest``; returns the script's path."""
    template = StrictEnvironment(context={"cookiecutter": answers}, keep_trailing_newline=True).from_string(
        (ROOT / "hooks" / f"{name}.py").read_text(encoding="utf-8")
    )
    script = dest / f"{name}.py"
    script.write_text(template.render(cookiecutter=answers), encoding="utf-8")
    return script


def backend_only_files(scratch: Path, **answers: Any) -> dict[str, list[str]]:
    """post_gen_project.py's BACKEND_ONLY_FILES table, rendered with the default answers."""
    scratch.mkdir(parents=True, exist_ok=True)
    script = render_hook("post_gen_project", default_context(**answers), scratch)
    table: dict[str, list[str]] = runpy.run_path(str(script), run_name="table_only")["BACKEND_ONLY_FILES"]
    return table


@pytest.fixture(scope="session")
def mypy_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this test process keeps mypy's caches (see test_bake.assert_mypy_clean)."""
    return tmp_path_factory.mktemp("mypy-caches")


@pytest.fixture
def bake(cookies: Any) -> Callable[..., Path]:
    """Bake with ``extra_context`` (keyword arguments); the bake must succeed. Returns the project dir."""

    def _bake(**extra_context: str) -> Path:
        result = cookies.bake(extra_context=extra_context)
        assert result.exception is None, f"bake failed with {extra_context}: {result.exception!r}"
        assert result.exit_code == 0
        project: Path = result.project_path
        assert project.is_dir()
        return project

    return _bake


def template_choices(name: str) -> list[str]:
    """The choices of a choice variable in cookiecutter.json, the default first."""
    choices = json.loads((ROOT / "cookiecutter.json").read_text(encoding="utf-8"))[name]
    assert isinstance(choices, list) and choices
    return [str(choice) for choice in choices]
