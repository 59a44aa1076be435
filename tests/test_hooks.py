"""The hooks: bad answers stop the bake with one clear line and leave nothing; no answer runs as code."""

from __future__ import annotations

import ast
import json
import re
import runpy
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from conftest import BIN, ROOT, backend_only_files, check, default_context, render_hook, run, template_choices

ERROR_LINE = re.compile(r"ERROR: [^\n;]*\S.*; .*\S")

# (answer, bad value): each must stop the bake with a message that names the answer.
BAD_ANSWERS = [
    ("project_slug", "My Service"),
    ("project_slug", "1-service"),
    ("project_slug", "my--service"),
    ("project_slug", "my_service"),
    ("project_slug", "-service"),
    ("project_slug", "service-"),
    ("project_slug", "../escape"),
    ("package_name", "my-service"),
    ("package_name", "1service"),
    ("package_name", "class"),
    ("package_name", "MyService"),
    ("package_name", "café"),
    ("package_name", "my service"),
    ("package_name", "json"),
    ("package_name", "asyncio"),
    ("package_name", "logging"),
    ("package_name", "redis"),
    ("package_name", "fastapi"),
    ("package_name", "tests"),
    ("package_name", "support"),
    ("lock_backend", "zookeeper"),
    ("python_version", "3.10"),
    ("python_version", "3.15"),
    ("author_email", "you"),
    ("author_email", "you@example"),
    ("author_email", "@example.com"),
    ("author_email", "you@@example.com"),
    ("author_email", "you @example.com"),
    ("author_email", "you@example.com "),
    ("lock_path", "relative/primary.lock"),
    ("lock_path", "~/primary.lock"),
    ("lock_path", "/tmp/with space.lock"),
    ("lock_path", "/tmp/tab\t.lock"),
    ("lock_path", "/tmp/quote'.lock"),
    ("lock_path", '/tmp/quote".lock'),
    ("lock_path", "/tmp/back\\slash.lock"),
    ("lock_path", "/tmp/my_service/../etc/primary.lock"),
    ("lock_path", "/tmp/my_service/"),
    ("lock_path", "/tmp/./primary.lock"),
    ("lock_path", "/tmp/primary.lock"),
    ("lock_path", "/dev/shm/primary.lock"),
    ("project_name", "Rocket \U0001f680 Service"),
    ("description", "Sends \U0001f4e7 reports"),
    ("author_name", "Zo\U0001f600"),
]
BAD_IDS = [f"{name}={value!r}" for name, value in BAD_ANSWERS]


def leftovers(tmp_path: Path) -> list[Path]:
    """Anything pytest-cookies' output area holds besides its own empty bakeNN directories."""
    return [
        path
        for path in (tmp_path / "cookies").rglob("*")
        if not (path.is_dir() and re.fullmatch(r"bake\d+", path.name) and not any(path.iterdir()))
    ]


def payload_literal(script: Path) -> str:
    """The string literal that the rendered hook passes to json.loads (found without running it)."""
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "loads":
            (argument,) = node.args
            assert isinstance(argument, ast.Constant) and isinstance(argument.value, str)
            return argument.value
    raise AssertionError(f"no json.loads(...) in {script}")


@pytest.mark.parametrize(("name", "value"), BAD_ANSWERS, ids=BAD_IDS)
def test_bad_answer_stops_the_bake_and_leaves_nothing(
    cookies: Any, capfd: pytest.CaptureFixture[str], tmp_path: Path, name: str, value: str
) -> None:
    result = cookies.bake(extra_context={name: value})
    assert result.exception is not None or result.exit_code != 0, f"{name}={value!r} was accepted"
    stderr = capfd.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR:")]
    if name in {"lock_backend", "python_version"}:
        # Choice variables: cookiecutter itself refuses a value outside the choices, before the hook
        # runs (test_hook_rejects_bad_answer checks the hook's own message for them).
        assert name in str(result.exception), f"{result.exception!r}\n{stderr}"
    else:
        assert len(errors) == 1, f"expected one ERROR line from the hook, stderr was:\n{stderr}"
        assert ERROR_LINE.fullmatch(errors[0]) and name in errors[0], errors[0]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("name", "value"), BAD_ANSWERS, ids=BAD_IDS)
def test_hook_rejects_bad_answer_with_one_line(tmp_path: Path, name: str, value: str) -> None:
    """The rendered pre-gen hook itself, fed the answer directly (bypassing cookiecutter's checks)."""
    script = render_hook("pre_gen_project", default_context(**{name: value}), tmp_path)
    result = run([sys.executable, str(script)], tmp_path)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and ERROR_LINE.fullmatch(lines[0]), result.stdout
    assert lines[0].startswith(f"ERROR: {name} "), lines[0]


def test_hook_accepts_the_defaults(tmp_path: Path) -> None:
    script = render_hook("pre_gen_project", default_context(), tmp_path)
    result = run([sys.executable, str(script)], tmp_path)
    assert (result.returncode, result.stdout) == (0, "")


INJECTIONS = [
    'x"; import os; os.system("touch {marker}"); "',
    "x'''; import os; os.system('touch {marker}'); '''",
    'x"""; import os; os.system("touch {marker}"); """',
    'x\\"""\n__import__("os").system("touch {marker}")\n"""',
    "x\\",
]


@pytest.mark.parametrize("template", INJECTIONS, ids=range(len(INJECTIONS)))
def test_project_name_with_code_is_never_run(bake: Callable[..., Path], tmp_path: Path, template: str) -> None:
    marker = tmp_path / "pwned"
    name = template.format(marker=marker)
    project = bake(project_name=name, project_slug="injection-test")
    title = name.replace("\\", "").replace('"', "'")  # how api.py keeps the literal plain
    if len(json.dumps(title)) > 90:
        title = "injection-test"  # too long for one line: api.py falls back to the slug
    result = run(
        [sys.executable, "-c", "import sys, injection_test.api as api; assert api.app.title == sys.argv[1]", title],
        project,
        PYTHONPATH=str(project / "src"),
    )
    assert result.returncode == 0, result.stdout
    assert not marker.exists(), "a project_name was executed as code"


@pytest.mark.parametrize("hook", ["pre_gen_project", "post_gen_project"])
@pytest.mark.parametrize("template", INJECTIONS, ids=range(len(INJECTIONS)))
def test_hooks_read_every_answer_as_data(tmp_path: Path, hook: str, template: str) -> None:
    """Every answer, however quoted, reaches the hook unchanged and is never run."""
    marker = tmp_path / "pwned"
    value = template.format(marker=marker) + " {{ x }} {% raw %} \\u0041 \U0001f600"
    context = default_context()
    context.update({key: value for key, current in context.items() if isinstance(current, str)})
    script = render_hook(hook, context, tmp_path)
    assert json.loads(payload_literal(script)) == json.loads(json.dumps(context))
    result = run([sys.executable, str(script)], tmp_path)
    if hook == "pre_gen_project":
        assert result.returncode == 1 and ERROR_LINE.fullmatch(result.stdout.strip()), result.stdout
    assert not marker.exists(), f"{hook} executed an answer as code"


def test_post_gen_removes_only_the_files_of_backends_not_chosen(tmp_path: Path) -> None:
    table = backend_only_files(tmp_path / "hook")
    listed = [tmp_path / path for paths in table.values() for path in paths]
    for chosen in [*table, "no-such-backend"]:
        for path in listed:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        script = render_hook("post_gen_project", default_context(lock_backend=chosen), tmp_path / "hook")
        check([sys.executable, str(script)], tmp_path)
        for backend, paths in table.items():
            for path in paths:
                assert (tmp_path / path).exists() == (path in table.get(chosen, [])), (chosen, backend, path)
    # Files already absent are fine too.
    check([sys.executable, str(script)], tmp_path)


def test_template_repository_code_is_lint_clean(tmp_path: Path) -> None:
    """ruff over these tests, and over the hooks as cookiecutter renders them (lint only: the rendered
    answers make one long data line in each hook, which the formatter would wrap)."""
    for hook in ["pre_gen_project", "post_gen_project"]:
        render_hook(hook, default_context(), tmp_path)
    ruff, config = str(BIN / "ruff"), ["--config", str(ROOT / "pyproject.toml"), "--no-cache"]
    check([ruff, "check", *config, str(ROOT / "tests")], ROOT)
    check([ruff, "format", "--check", *config, str(ROOT / "tests")], ROOT)
    check([ruff, "check", *config, "--extend-ignore", "E501", str(tmp_path)], ROOT)


@pytest.mark.parametrize(("name", "suggestion"), [("json", "json_service"), ("redis", "redis_service")])
def test_a_package_name_that_shadows_a_module_is_refused_with_a_suggestion(
    tmp_path: Path, name: str, suggestion: str
) -> None:
    script = render_hook("pre_gen_project", default_context(package_name=name), tmp_path)
    result = run([sys.executable, str(script)], tmp_path)
    assert result.returncode == 1
    assert f"package_name {name!r} would shadow the module of the same name" in result.stdout
    assert f"type one like {suggestion!r}" in result.stdout


def test_every_module_the_dependencies_install_is_a_taken_name(bake: Callable[..., Path], tmp_path: Path) -> None:
    """The hook's list of names a package must not take covers every top-level module installed by
    the generated project's dependencies (every backend, dev included) and by theirs."""
    script = render_hook("pre_gen_project", default_context(), tmp_path)
    taken = runpy.run_path(str(script), run_name="names_only")["TAKEN_NAMES"]
    requirements = []
    for backend in template_choices("lock_backend"):
        pyproject = tomllib.loads((bake(lock_backend=backend) / "pyproject.toml").read_text())
        requirements += [*pyproject["project"]["dependencies"], *pyproject["dependency-groups"]["dev"]]
    missing = sorted(installed_modules(requirements) - set(taken))
    assert missing == [], f"add these to DEPENDENCIES in hooks/pre_gen_project.py: {missing}"


def installed_modules(requirements: list[str]) -> set[str]:
    """Top-level modules of the installed distributions these requirements name, and of theirs."""
    pending = [re.split(r"[\s;<>=!~\[(]", requirement.strip(" \"'"))[0] for requirement in requirements]
    seen: set[str] = set()
    modules: set[str] = set()
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if not name or "{" in name or name in seen:
            continue
        seen.add(name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (another platform, or an option's extra)
        for file in distribution.files or []:
            top = file.parts[0].removesuffix(".py")
            is_module = (file.suffix in {".py", ".so"} or len(file.parts) > 1) and top.isidentifier()
            if is_module and (not top.startswith("_") or top == "_pytest"):
                modules.add(top)
        pending += [
            re.split(r"[\s;<>=!~\[(]", requirement)[0]
            for requirement in distribution.requires or []
            if "extra ==" not in requirement
        ]
    return modules
