"""The deployment files of every bake, checked by the real tools (these machines have no Docker engine)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import BIN, ROOT, check, run, template_choices

COMBINATIONS = [(b, v) for b in template_choices("lock_backend") for v in template_choices("python_version")]


@pytest.mark.parametrize(("lock_backend", "python_version"), COMBINATIONS, ids=[f"{b}-py{v}" for b, v in COMBINATIONS])
def test_deployment_files_pass_their_linters(bake: Callable[..., Path], lock_backend: str, python_version: str) -> None:
    project = bake(lock_backend=lock_backend, python_version=python_version)

    check([str(BIN / "docker-compose"), "-f", "docker-compose.yml", "config", "-q"], project)
    check([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"], project)
    check([str(BIN / "hadolint"), "Dockerfile"], project)
    workflow = ".github/workflows/ci.yml"
    check([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", workflow], project)
    check([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.dependabot", ".github/dependabot.yml"], project)
    check_workflow(yaml.safe_load((project / workflow).read_text()))
    check([str(BIN / "pre-commit"), "validate-config", ".pre-commit-config.yaml"], project)
    hooks = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())["repos"]
    assert {"ruff-check", "ruff-format", "mypy"} <= {hook["id"] for repo in hooks for hook in repo["hooks"]}
    dependabot = yaml.safe_load((project / ".github" / "dependabot.yml").read_text())["updates"]
    assert {"uv", "github-actions", "docker"} == {update["package-ecosystem"] for update in dependabot}

    services = yaml.safe_load((project / "docker-compose.yml").read_text())["services"]
    api = {name: service for name, service in services.items() if name.startswith("api")}
    assert len(api) == 2, "two api containers, to show one election across them"
    for service in api.values():  # healthy means ready: the start-up tasks are done
        assert "/health/ready" in " ".join(service["healthcheck"]["test"])
        assert service["healthcheck"]["start_period"] == "300s"
    if lock_backend == "file":
        assert "redis" not in services
        # Every api container mounts the same named volume where the lock file lives.
        assert all("lock-dir:/tmp" in service["volumes"] for service in api.values())
        assert all(service["environment"]["LOCK_PATH"].startswith("/tmp/") for service in api.values())
    elif lock_backend == "redis":
        assert "volumes" not in next(iter(api.values()))
        assert "noeviction" in services["redis"]["command"] and "healthcheck" in services["redis"]
        command = services["redis"]["command"]  # the run ledger and the holder record survive a restart
        assert command[command.index("--appendonly") + 1] == "yes"
        assert all(s["depends_on"]["redis"]["condition"] == "service_healthy" for s in api.values())
    elif lock_backend == "postgres":
        assert "volumes" not in next(iter(api.values()))
        postgres = services["postgres"]
        assert "healthcheck" in postgres and any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
        assert all(s["depends_on"]["postgres"]["condition"] == "service_healthy" for s in api.values())
        assert all("@postgres:5432/" in s["environment"]["DATABASE_URL"] for s in api.values())
    else:
        pytest.fail(f"no deployment checks for the {lock_backend} backend")

    dockerfile = (project / "Dockerfile").read_text()
    assert f"FROM python:{python_version}-slim" in dockerfile
    assert "USER 10001" in dockerfile and "HEALTHCHECK" in dockerfile and "/health/ready" in dockerfile
    assert 'CMD ["python", "-m", "my_service"]' in dockerfile and "WORKERS=4" in dockerfile
    # Exactly uv.lock, without the dev group, bytecode compiled at build time, uv's cache mounted.
    assert re.search(r"^COPY --from=uv /uv ", dockerfile, re.MULTILINE)
    assert dockerfile.count("uv sync --frozen --no-dev") == 2 and "UV_COMPILE_BYTECODE=1" in dockerfile
    assert dockerfile.count("--mount=type=cache,target=/root/.cache/uv") == 2

    # gunicorn reads its config file with the project importable (it validates the settings first).
    show = "import runpy; c = runpy.run_path('gunicorn.conf.py'); print(c['worker_class'], c['control_socket_disable'])"
    result = run([sys.executable, "-c", show], project, PYTHONPATH=str(project / "src"))
    assert result.stdout.split() == ["uvicorn_worker.UvicornWorker", "True"], result.stdout


def check_workflow(workflow: dict[str, Any]) -> None:
    """The generated CI: read-only token, actions pinned by commit, every job installs exactly uv.lock
    with setup-uv's cache, and the tests run on every Python the template offers."""
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        steps = job["steps"]
        for step in steps:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"{name}: pin {step['uses']}"
        setup_uv = next(step for step in steps if step.get("uses", "").startswith("astral-sh/setup-uv@"))
        assert setup_uv["with"]["enable-cache"] is True
        assert any(step.get("run") == "uv sync --locked" for step in steps), f"{name} does not install uv.lock"
    matrix = workflow["jobs"]["test"]["strategy"]["matrix"]["python-version"]
    assert sorted(matrix) == sorted(template_choices("python_version")), "test every Python the template offers"


def test_answers_file_holds_no_machine_paths_and_replays(bake: Callable[..., Path], tmp_path: Path) -> None:
    project = bake(lock_backend="redis", project_name="Replay Me")
    text = (project / ".cookiecutter.json").read_text()
    answers = json.loads(text)["cookiecutter"]
    assert not [key for key in answers if key.startswith("_")]
    assert str(project.parent) not in text and str(ROOT) not in text

    replay = ["--replay-file", str(project / ".cookiecutter.json"), str(ROOT), "-o", str(tmp_path)]
    check([sys.executable, "-m", "cookiecutter", *replay], tmp_path)
    again = tmp_path / project.name
    assert (again / "src" / "replay_me" / "coordination" / "redis_lock.py").is_file()
    assert (again / "README.md").read_text() == (project / "README.md").read_text()


def test_the_template_repository_runs_its_own_tests_in_ci() -> None:
    """The README says CI runs `bash .ci/run`: the template's own workflow does exactly that."""
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    check([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)], ROOT)
    steps = yaml.safe_load(workflow.read_text())["jobs"]["template"]["steps"]
    assert any(step.get("run") == "bash .ci/run" for step in steps)


def test_the_prometheus_alert_rules_use_the_metrics_the_service_exports(bake: Callable[..., Path]) -> None:
    project = bake()
    rules_file = project / "deploy" / "prometheus" / "alerts.yml"
    if promtool := shutil.which("promtool"):
        check([promtool, "check", "rules", str(rules_file)], project)
    rules = [rule for group in yaml.safe_load(rules_file.read_text())["groups"] for rule in group["rules"]]
    assert {"NoPrimaryWorker", "MoreThanOnePrimaryWorker", "PrimaryLockErrors"} <= {r["alert"] for r in rules}
    source = (project / "src" / "my_service" / "metrics.py").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"} and rule["annotations"]["summary"]
        for metric in re.findall(r"\b((?:primary|singleton)_\w+?)(?:_total)?\{", rule["expr"]):
            assert f'"{metric}"' in source, f"{rule['alert']} uses {metric}, which the service does not export"
