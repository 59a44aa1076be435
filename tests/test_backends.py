"""The backend seam: every lock backend is the same handful of parts, and no template branch means
"the other backend" by default (see "Adding a lock backend" in the README)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, backend_only_files, template_choices

PROJECT_TEMPLATE = ROOT / "{{cookiecutter.project_slug}}"
PACKAGE_TEMPLATE = PROJECT_TEMPLATE / "src" / "{{cookiecutter.package_name}}"
FRAGMENTS = ROOT / "templates" / "backends"
FRAGMENT_FILES = ["docker-compose.yml", "env.example", "ci-steps.yml", "readme.md.j2"]
SEAM_NAMES = ["class BackendSettings(", "SECRET_SETTINGS", "def make_lock(", "async def demo_scope("]
CONTRACT_NAMES = [
    "BACKEND = ",
    "BAD_SETTINGS = ",
    "FAILS_OVER_AT_ONCE = ",
    "def backend_server(",
    "def lock_env(",
    "def fresh_lock_env(",
    "async def take_over_behind_its_back(",
    "def unusable_lock_env(",
    "def scope_footprint(",
]


@pytest.mark.parametrize("backend", template_choices("lock_backend"))
def test_every_backend_has_every_part(backend: str, tmp_path: Path) -> None:
    module = (PACKAGE_TEMPLATE / "coordination" / f"{backend}_lock.py").read_text(encoding="utf-8")
    assert [name for name in SEAM_NAMES if name not in module] == [], f"{backend}_lock.py misses a seam name"
    contract = (PROJECT_TEMPLATE / "tests" / f"backend_{backend}.py").read_text(encoding="utf-8")
    assert [name for name in CONTRACT_NAMES if name not in contract] == [], f"backend_{backend}.py is incomplete"
    assert (PROJECT_TEMPLATE / "tests" / f"test_{backend}_lock.py").is_file(), "its own fault tests"
    assert [name for name in FRAGMENT_FILES if not (FRAGMENTS / backend / name).is_file()] == []
    assert (ROOT / "templates" / "locks" / f"{backend}.lock").is_file(), "its uv.lock: run tools/relock.py"

    table = backend_only_files(tmp_path, lock_backend=backend)
    assert f"tests/backend_{backend}.py" in table[backend] and f"tests/test_{backend}_lock.py" in table[backend]
    assert any(path.endswith(f"coordination/{backend}_lock.py") for path in table[backend])

    pyproject = (PROJECT_TEMPLATE / "pyproject.toml").read_text(encoding="utf-8")
    local = tomllib.loads(re.search(r"^known-local-folder = .*$", pyproject, re.MULTILINE)[0])  # type: ignore[index]
    assert f"backend_{backend}" in local["known-local-folder"], "ruff must sort its imports as the tests' own"


def test_no_branch_means_the_other_backend() -> None:
    """``{% else %}`` after a backend test would render one backend's text for every other one."""
    offenders = []
    for path in [*PROJECT_TEMPLATE.rglob("*"), *FRAGMENTS.rglob("*"), *(ROOT / "hooks").rglob("*")]:
        if path.is_file() and "__pycache__" not in path.parts:
            text = path.read_text(encoding="utf-8")
            offenders += [f"{path.relative_to(ROOT)}" for _ in re.finditer(r"\{%-?\s*else\s*-?%\}", text)]
    assert offenders == []


def test_backend_is_chosen_in_one_place() -> None:
    """Generated code never asks which backend it has: only backend.py and the tests' contract.py
    name it, besides the docs, the dependencies and the deployment fragments, and the example
    start-up task in jobs.py (a migration where the backend is a database)."""
    allowed = {
        "src/{{cookiecutter.package_name}}/coordination/backend.py",
        "src/{{cookiecutter.package_name}}/jobs.py",
        "tests/contract.py",
        "pyproject.toml",
        "README.md",
        "docker-compose.yml",
        ".env.example",
        ".github/workflows/ci.yml",
        "uv.lock",
    }
    naming = sorted(
        str(path.relative_to(PROJECT_TEMPLATE))
        for path in PROJECT_TEMPLATE.rglob("*")
        if path.is_file() and "cookiecutter.lock_backend" in path.read_text(encoding="utf-8", errors="replace")
    )
    assert [path for path in naming if path not in allowed] == []
