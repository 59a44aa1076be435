"""Command line: ``python -m {{ cookiecutter.package_name }}.coordination status|demo``.

``status`` prints who holds the primary lock and exits 0, or says why nobody does and exits 1 (3 for
a bad setting), so it also serves as a monitoring check; then it lists the singleton jobs declared in
``jobs.py`` as the run ledger knows them. ``demo`` shows an election and a failover among N processes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .. import jobs  # noqa: F401  (declares the service's jobs)
from ..config import ConfigError, Settings, load_settings
from . import LockError, PrimaryLock, declared_jobs, make_lock
from .demo import run_demo

BAD_SETTING = 3


async def show_status(settings: Settings) -> int:
    lock = make_lock(settings)
    try:
        holder = await lock.read_holder()
    except LockError as exc:
        print(f"unknown: {exc}", file=sys.stderr)
        await lock.close()
        return 1
    try:
        if holder is None:
            print(f"no primary: nobody holds the {lock.location}", file=sys.stderr)
        else:
            print(f"primary: {holder.describe()} ({lock.location})")
        await show_jobs(settings, lock)
    finally:
        await lock.close()
    return 0 if holder is not None else 1


async def show_jobs(settings: Settings, lock: PrimaryLock) -> None:
    """One line per job: its schedule, last done period, next due time and last failure."""
    try:
        described = await declared_jobs(settings).describe(lock.run_ledger())
    except LockError as exc:
        print(f"jobs: unknown: {exc}")
        return
    for job in described:
        print(describe_job(job))


def describe_job(job: dict[str, Any]) -> str:
    failure = job["last_failure"]
    failed = "none"
    if failure:
        failed = failure["run"] + (f" ({failure['error']})" if failure["error"] else "")
    if job["kind"] == "startup":
        state = "done" if job["done"] else "PENDING"
        return f"start-up task {job['name']}: version {job['version']} {state}; last failure: {failed}"
    catch_up = f"catch-up {job['catch_up']} within {job['catch_up_seconds']:g} s"
    return (
        f"job {job['name']}: schedule {job['schedule']!r} ({job['timezone']}, {catch_up}); "
        f"last done: {job['last_done'] or 'never'}; next due: {job['next_due'] or 'never'}; "
        f"last failure: {failed}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.coordination")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="print who holds the primary lock (exit 1 if nobody)")
    demo = commands.add_parser("demo", help="run an election among N processes, then a failover")
    demo.add_argument("--workers", type=int, default=4, help="number of processes (default: 4)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return BAD_SETTING
    if args.command == "status":
        return asyncio.run(show_status(settings))
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    return run_demo(settings, args.workers)


if __name__ == "__main__":
    sys.exit(main())
