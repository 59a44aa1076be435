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
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, TypeAlias

from .backend import demo_scope, make_lock
from .base import LockError

if TYPE_CHECKING:
    from ..config import Settings

REPORT_TIMEOUT_SECONDS = 60.0
Report = tuple[int, int, str, str]
"""(worker index, pid, role or FAILED, details) as a demo process reports it."""
Pipe: TypeAlias = "Connection[Report, Report]"  # (subscripted only for the type checker)
"""Each process reports on a pipe of its own: a queue shared by all has a lock, which a process
killed while holding it would never give back (the next report would never arrive)."""


def _compete(index: int, settings: Settings, reports: Pipe) -> None:
    async def campaign() -> None:
        lock = make_lock(settings)
        try:
            won = await lock.try_acquire()
            wait = lock.takeover_delay()
            note = f" (it starts singleton work in {wait:.1f} s, once any earlier lease has surely ended)"
            reports.send((index, os.getpid(), "PRIMARY" if won else "SECONDARY", note if wait else ""))
            if not won:
                await lock.acquire()
                reports.send((index, os.getpid(), "TAKEOVER", ""))
        except LockError as exc:
            reports.send((index, os.getpid(), "FAILED", str(exc)))
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
        pipes = [context.Pipe(duplex=False) for _ in range(workers)]
        processes = [
            context.Process(target=_compete, args=(i, demo_settings, sender), daemon=True)
            for i, (_, sender) in enumerate(pipes)
        ]
        for process in processes:
            process.start()
        try:
            return await asyncio.to_thread(_watch, [receiver for receiver, _ in pipes])
        finally:
            for process in processes:
                process.kill()
                process.join()


def _watch(reports: Sequence[Pipe]) -> int:
    deadline = time.monotonic() + REPORT_TIMEOUT_SECONDS
    roles: list[Report] = []
    for pipe in reports:  # the first report of each process: its role
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            print(f"FAILED: not every process reported within {REPORT_TIMEOUT_SECONDS:.0f} s")
            return 1
        roles.append(pipe.recv())
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
    standbys = [pipe for pipe, (_, _, role, _) in zip(reports, roles, strict=True) if role != "PRIMARY"]
    os.kill(primaries[0], signal.SIGKILL)
    killed_at = time.perf_counter()
    ready = wait(standbys, timeout=REPORT_TIMEOUT_SECONDS)  # the first standby to report its takeover
    if not ready:
        print(f"FAILED: nobody took over within {REPORT_TIMEOUT_SECONDS:.0f} s")
        return 1
    index, pid, role, details = next(pipe for pipe in standbys if pipe in ready).recv()
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
