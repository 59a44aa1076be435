"""A baked project installs as its README says, with uv (exactly uv.lock) and with plain pip (the
dependency group of pyproject.toml, PEP 735), and its package imports from the install.

One install per tool, of the default bake (the file backend has the fewest dependencies; every
backend's lock is checked by test_bake.py). uv and pip use their default caches, shared by every run
on the machine, so after the first run nothing is downloaded again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BIN, check

# The installed package and its tools import: the app (every runtime dependency on its import path),
# and what the dev group brings for the tests and the checks.
PROBE = "import my_service.api, my_service.coordination.election, pytest, pytest_timeout, aiosmtpd, httpx, mypy"


@pytest.mark.timeout(600)
def test_uv_sync_frozen_installs_the_lock(bake: Callable[..., Path]) -> None:
    project = bake()
    uv = [str(BIN / "uv"), "sync", "--frozen", "--python", sys.executable]  # not .python-version's Python
    check(uv, project, UV_PYTHON_DOWNLOADS="never")
    python = project / ".venv" / "bin" / "python"
    check([str(python), "-c", PROBE], project)
    # The project itself is installed (editable), not only its dependencies.
    check([str(python), "-c", "import importlib.metadata as m; assert m.version('my-service')"], project)


@pytest.mark.timeout(600)
def test_pip_installs_the_project_with_its_dev_group(bake: Callable[..., Path], tmp_path: Path) -> None:
    project = bake()
    venv = tmp_path / "venv"
    check([sys.executable, "-m", "venv", str(venv)], tmp_path)
    # --no-compile: what is checked is what gets installed and that it imports; byte-compiling every
    # library (mypy and ruff's tools among them) would add a minute of CPU to each run of this suite.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    check([*pip, "--upgrade", "pip>=25.1"], tmp_path)  # the first pip that reads dependency groups
    check([*pip, "-e", ".", "--group", "dev"], project)
    check([str(venv / "bin" / "python"), "-c", PROBE], tmp_path)
