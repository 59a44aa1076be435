#!/usr/bin/env python3
"""Repro: cancelling RedisLock.hold() is occasionally lost (the task keeps renewing the lease).

Found by bench/run.py: a primary that got SIGTERM hung in the lifespan shutdown for good, in
``Election.stop()`` awaiting its ``primary-election`` task, which was in state "cancelling" but
back in ``hold()``'s sleep, renewing the lease every second, so nobody else could take over and
the worker never exited.

This script bakes the redis variant, starts a private redis-server, and ``--runs`` times acquires a
lease (then ttl 0.3 s: a renewal every 0.1 s), runs ``hold()`` as a task, cancels it at a random
moment and checks that the task ends within 1 s. Prints how many cancellations were lost, and the
task's stack for each. Run: ``.venv/bin/python bench/repro_cancel.py [--runs 400]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    from cookiecutter.main import cookiecutter

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=tmp, extra_context={"lock_backend": "redis"}))
        sys.path.insert(0, str(project / "src"))
        from my_service.coordination.redis_lock import RedisLock

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)

        async def run() -> int:
            lost = 0
            for i in range(args.runs):
                lock = RedisLock(f"redis://127.0.0.1:{port}/0", f"repro{i}", 3.0, 1.0)
                assert await lock.try_acquire()
                lock.ttl = 0.3  # renew every 0.1 s, so that cancellations often land in a renewal
                task = asyncio.create_task(lock.hold())
                await asyncio.sleep(random.uniform(0.0, 0.3))
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=1.0)
                if not done:
                    lost += 1
                    print(f"run {i}: cancellation lost, task.cancelling()={task.cancelling()}")
                    task.print_stack()
                    while not task.done():  # what a robust stop would have to do
                        task.cancel()
                        await asyncio.wait({task}, timeout=0.5)
                elif not task.cancelled() and task.exception() is not None:
                    pass  # hold() ended with LockError etc.: the cancellation was not lost
                await lock.client.aclose()
            return lost

        try:
            lost = asyncio.run(run())
        finally:
            redis.kill()
        print(f"lost cancellations: {lost} of {args.runs} (python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
