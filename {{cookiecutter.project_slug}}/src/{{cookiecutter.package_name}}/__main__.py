"""The launcher: ``python -m <package> [--host HOST] [--port PORT] [--workers N]``.

It reads and checks the settings once, in this parent process, before any worker starts: a bad one
ends the launcher with its one-line message and exit status 3, which an orchestrator reads as a
failure. So does a bad job declaration in ``jobs.py`` (two jobs of one name, a schedule that is
no schedule): otherwise every worker would fail on it and be restarted, for ever. (``uvicorn
<package>.api:app --workers N`` works as well, but there each worker finds the bad setting on its
own, and uvicorn's supervisor then exits 0.) Then it runs uvicorn with ``--workers`` worker
processes; the flags default to the settings ``HOST``, ``PORT`` and ``WORKERS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import uvicorn

from .config import ConfigError, load_settings
from .coordination import declared_jobs
from .logs import uvicorn_log_config

BAD_SETTING = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}",
        description="Run the service with several workers, one of them the primary.",
    )
    parser.add_argument("--host", help="address to bind (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", help="port to bind (default: PORT, else 8000)")
    parser.add_argument("--workers", help="worker processes (default: WORKERS, else 4)")
    args = parser.parse_args(argv)
    flags = {name: value for name, value in vars(args).items() if value is not None}
    try:
        settings = load_settings(**flags)
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return BAD_SETTING
    try:
        importlib.import_module(f"{__package__}.jobs")  # declares the jobs, as every worker will
        declared_jobs(settings)  # and resolves the schedules that depend on settings
    except ValueError as exc:  # what the decorators refuse: the message says what and how
        print(f"ERROR: bad job declaration in {__package__}.jobs: {exc}", file=sys.stderr)
        return BAD_SETTING
    uvicorn.run(
        f"{__package__}.api:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=uvicorn_log_config(settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
