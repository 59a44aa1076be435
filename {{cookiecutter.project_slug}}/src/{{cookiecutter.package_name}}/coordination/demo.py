"""An election you can watch: N processes compete for a private demo lock, then the primary is killed.

Each process makes one attempt (exactly what a worker does at start-up) and reports its role; the
losers keep campaigning, as the service's standbys do. The demo then kills the primary with SIGKILL
and reports which process took over and how long that took. It uses its own lock (a temporary file,
or a ``-demo`` key prefix in Redis), so it never disturbs a running service.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
import time
from multiprocessing.queues import Queue
from pathlib import Path

from ..config import Settings
from . import make_lock

REPORT_TIMEOUT_SECONDS = 60.0


def _compete(index: int, settings: Settings, reports: Queue[tuple[int, int, str]]) -> None:
    async def campaign() -> None:
        lock = make_lock(settings)
        won = await lock.try_acquire()
        reports.put((index, os.getpid(), "PRIMARY" if won else "SECONDARY"))
        if not won:
            await lock.acquire()
            reports.put((index, os.getpid(), "TAKEOVER"))
        await asyncio.Event().wait()  # hold the lock until the demo ends this process

    asyncio.run(campaign())


def run_demo(settings: Settings, workers: int) -> int:
    with tempfile.TemporaryDirectory(prefix="election-demo-") as scratch:
        update: dict[str, object] = {}
        if hasattr(settings, "lock_path"):
            update["lock_path"] = Path(scratch) / "demo.lock"
        if hasattr(settings, "lock_key_prefix"):
            update["lock_key_prefix"] = f"{settings.lock_key_prefix}-demo"
        demo_settings = settings.model_copy(update=update)
        context = multiprocessing.get_context("spawn")
        reports: Queue[tuple[int, int, str]] = context.Queue()
        processes = [
            context.Process(target=_compete, args=(i, demo_settings, reports), daemon=True)
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        try:
            roles = [reports.get(timeout=REPORT_TIMEOUT_SECONDS) for _ in processes]
            for index, pid, role in sorted(roles):
                mark = "✓" if role == "PRIMARY" else "✗"
                print(f"Worker {index} (PID {pid}): {mark} I am {role}", flush=True)
            primaries = [pid for _, pid, role in roles if role == "PRIMARY"]
            if len(primaries) != 1:
                print(f"FAILED: {len(primaries)} primaries")
                return 1
            os.kill(primaries[0], signal.SIGKILL)
            killed_at = time.perf_counter()
            index, pid, _ = reports.get(timeout=REPORT_TIMEOUT_SECONDS)
            took_ms = (time.perf_counter() - killed_at) * 1000
            print(
                f"Killed the primary (PID {primaries[0]}) with SIGKILL: "
                f"worker {index} (PID {pid}) took over in {took_ms:.0f} ms",
                flush=True,
            )
            return 0
        finally:
            for process in processes:
                process.kill()
                process.join()
