"""Baking the template, and the bench's own reference apps and process environments.

The baked projects' ``tests/`` directories go on ``sys.path`` (and one ``src/``), so that the bench
uses the generated tests' helpers instead of copies of them: ``support`` (free_port, is_alive,
wait_until), ``conftest`` (the Server that reads role lines), ``mail_sink`` (MailSink, mail_env),
``backend_redis`` (RedisServer) and ``backend_postgres`` (PostgresServer).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "my_service"  # package of the default project name "My Service"
BACKENDS = ("file", "redis", "postgres")


def bake(backend: str, tmp: Path) -> Path:
    """Bake the template with ``lock_backend=backend``; return the project directory."""
    from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

    out = tmp / f"baked-{backend}"
    out.mkdir(parents=True, exist_ok=True)
    return Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(out), extra_context={"lock_backend": backend}))


def use_baked_tests(projects: list[Path]) -> None:
    """Make the baked tests' modules importable here: every project's ``tests/`` (they differ only in
    their ``backend_<name>.py`` and test modules) and the first project's ``src/`` (``conftest`` and the
    backend modules import the package, and only names that every backend's package has)."""
    for path in [projects[0] / "src", *(p / "tests" for p in projects)]:
        if str(path) not in sys.path:
            sys.path.append(str(path))


def bake_all(backends: list[str], tmp: Path) -> dict[str, Path]:
    """Bake each backend, then put the baked tests' helpers on ``sys.path``."""
    projects = {backend: bake(backend, tmp) for backend in backends}
    use_baked_tests(list(projects.values()))
    return projects


BASELINE_APP = '''
"""The original guide's pattern: one non-blocking flock attempt per worker at start-up, no retry."""
import asyncio, fcntl, os
from contextlib import asynccontextmanager
from fastapi import FastAPI

@asynccontextmanager
async def lifespan(app):
    fd = open(os.environ["LOCK_PATH"], "a")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        primary = True
    except OSError:
        primary = False
    print(f"Worker startup: pid={os.getpid()}, primary={primary}", flush=True)
    yield
    await asyncio.sleep(float(os.environ.get("SLOW_EXIT_SECONDS", "0")))
    fd.close()

app = FastAPI(lifespan=lifespan)

@app.get("/health")
async def health():
    return {"status": "ok"}
'''

PLAIN_APP = '''
"""FastAPI without any coordination: the throughput reference."""
from fastapi import FastAPI

app = FastAPI()

@app.get("/health")
async def health():
    return {"status": "ok"}
'''


def write_apps(tmp: Path) -> Path:
    """Write the baseline and plain app modules into ``tmp/apps``; return that directory."""
    directory = tmp / "apps"
    directory.mkdir(exist_ok=True)
    (directory / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP))
    (directory / "plain_app.py").write_text(textwrap.dedent(PLAIN_APP))
    return directory


def base_env(pythonpath: list[Path], **extra: str) -> dict[str, str]:
    """This process's environment without any service setting, with ``pythonpath`` and ``extra``."""
    prefixes = ("LOCK_", "REDIS_", "DATABASE_", "SMTP_", "EMAIL_", "ALERT_", "REPORT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def project_env(project: Path, **extra: str) -> dict[str, str]:
    """The environment of a server of ``project``.

    Not the tests' ``conftest.service_env``: that one is bound to the project its conftest was
    imported from (one src/ for all three backends here) and sets LOCK_RETRY_SECONDS=0.2, while the
    bench measures the defaults (retry 1 s) unless a measurement says otherwise."""
    return base_env([project / "src", project / "tests"], **extra)
