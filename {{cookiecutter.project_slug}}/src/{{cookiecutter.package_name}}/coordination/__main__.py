"""Command line: ``python -m {{ cookiecutter.package_name }}.coordination status|demo``.

``status`` prints who holds the primary lock and exits 0, or says why nobody does and exits 1 (3 for
a bad setting), so it also serves as a monitoring check. ``demo`` shows an election and a failover
among N processes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..config import ConfigError, Settings, load_settings
from . import LockError, make_lock
from .demo import run_demo

BAD_SETTING = 3


async def show_status(settings: Settings) -> int:
    lock = make_lock(settings)
    try:
        holder = await lock.read_holder()
    except LockError as exc:
        print(f"unknown: {exc}", file=sys.stderr)
        return 1
    finally:
        await lock.close()
    if holder is None:
        print(f"no primary: nobody holds the {lock.location}", file=sys.stderr)
        return 1
    print(f"primary: {holder.describe()} ({lock.location})")
    return 0


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
