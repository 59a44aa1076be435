"""An election you can watch: N processes compete for a private demo lock, then the primary is killed.

Each process makes one attempt (exactly what a worker does at start-up) and reports its role; the
losers keep campaigning, as the service's standbys do. The demo then kills the primary with SIGKILL
and reports which process took over and how long that took. It uses a lock scope of its own (a
temporary lock file, or keys under a random ``-demo-`` prefix that it deletes at the end), so it
never disturbs a running service, and it says where that scope is.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from multiprocessing.queues import Queue
from queue import Empty
from typing import TYPE_CHECKING

from .backend import demo_scope, make_lock
from .base import LockError

if TYPE_CHECKING:
    from ..config import Settings

REPORT_TIMEOUT_SECONDS = 60.0
Report = tuple[int, int, str, str]
"""(worker index, pid, role or FAILED, details) as a demo process reports it."""


def _compete(index: int, settings: Settings, reports: Queue[Report]) -> None:
    async def campaign() -> None:
        lock = make_lock(settings)
        try:
            won = await lock.try_acquire()
            wait = lock.takeover_delay()
            note = f" (it starts singleton work in {wait:.1f} s, once any earlier lease has surely ended)"
            reports.put((index, os.getpid(), "PRIMARY" if won else "SECONDARY", note if wait else ""))
            if not won:
                await lock.acquire()
                reports.put((index, os.getpid(), "TAKEOVER", ""))
        except LockError as exc:
            reports.put((index, os.getpid(), "FAILED", str(exc)))
            return
        await asyncio.Event().wait()  # hold the lock until the demo ends this process

    asyncio.run(campaign())


def run_demo(settings: Settings, workers: int) -> int:
    try:
        return asyncio.run(_run_demo(settings, workers))
    except (OSError, LockError) as exc:
        print(f"FAILED: the demo cannot set up a lock scope of its own: {exc}")
        return 1


async def _run_demo(settings: Settings, workers: int) -> int:
    async with demo_scope(settings) as demo_settings:
        print(f"Demo election on the {make_lock(demo_settings).location} (a scope of its own)", flush=True)
        context = multiprocessing.get_context("spawn")
        reports: Queue[Report] = context.Queue()
        processes = [
            context.Process(target=_compete, args=(i, demo_settings, reports), daemon=True)
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        try:
            return await asyncio.to_thread(_watch, processes, reports)
        finally:
            for process in processes:
                process.kill()
                process.join()


def _watch(processes: Sequence[multiprocessing.process.BaseProcess], reports: Queue[Report]) -> int:
    try:
        roles = [reports.get(timeout=REPORT_TIMEOUT_SECONDS) for _ in processes]
    except Empty:
        print(f"FAILED: not every process reported within {REPORT_TIMEOUT_SECONDS:.0f} s")
        return 1
    for index, pid, role, details in sorted(roles):
        if role == "FAILED":
            print(f"Worker {index} (PID {pid}): FAILED: {details}")
            return 1
        mark = "✓" if role == "PRIMARY" else "✗"
        print(f"Worker {index} (PID {pid}): {mark} I am {role}{details}", flush=True)
    primaries = [pid for _, pid, role, _ in roles if role == "PRIMARY"]
    if len(primaries) != 1:
        print(f"FAILED: {len(primaries)} primaries")
        return 1
    os.kill(primaries[0], signal.SIGKILL)
    killed_at = time.perf_counter()
    try:
        index, pid, role, details = reports.get(timeout=REPORT_TIMEOUT_SECONDS)
    except Empty:
        print(f"FAILED: nobody took over within {REPORT_TIMEOUT_SECONDS:.0f} s")
        return 1
    if role == "FAILED":
        print(f"Worker {index} (PID {pid}): FAILED: {details}")
        return 1
    took_ms = (time.perf_counter() - killed_at) * 1000
    print(
        f"Killed the primary (PID {primaries[0]}) with SIGKILL: "
        f"worker {index} (PID {pid}) took over in {took_ms:.0f} ms",
        flush=True,
    )
    return 0
