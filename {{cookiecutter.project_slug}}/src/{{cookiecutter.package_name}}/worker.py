"""What every worker process runs beside HTTP: its election, its alert digests, and a hook on the
server's shutdown signals. ``api.py`` enters ``run_worker`` in the FastAPI lifespan.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from .config import Settings
from .coordination import Election, SingletonService, make_lock
from .logs import log_role_of
from .metrics import worker_exits
from .notifications.alerts import start_alert_digests


@asynccontextmanager
async def run_worker(settings: Settings, services: Sequence[SingletonService]) -> AsyncIterator[Election]:
    """Take part in the election for as long as the block runs; never raises for a lock problem.

    Runs in each worker after the server has started it (never at import time, where gunicorn
    ``--preload`` would make every forked worker share one lock).
    """
    election = Election(make_lock(settings), services, retry_seconds=settings.lock_retry_seconds)
    alerts = start_alert_digests(settings, lambda: "primary" if election.is_primary else "standby")
    log_role_of(election)
    await election.start()  # a lock problem leaves this worker standby, serving and retrying
    retire_on_shutdown_signal(election)
    try:
        yield election
    finally:
        await election.stop()  # stops the singleton services, then releases the lock
        if alerts:
            await alerts.stop()
        worker_exits()  # its gauges leave the sums (``/metrics``)


def retire_on_shutdown_signal(election: Election) -> None:
    """Stop campaigning as soon as the server is told to stop this worker (SIGTERM or SIGINT).

    uvicorn and gunicorn's Uvicorn worker catch these signals, then finish in-flight requests, then
    run the lifespan's shutdown. We add a step in front of their handler, so that a worker on its way
    out no longer competes for the lock: it passes to a worker that stays.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread (not so under a test client)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        server_handler = signal.getsignal(signum)
        if not callable(server_handler):
            continue  # no server handler to chain (e.g. under a test client): nothing to do

        def handler(signum: int, frame: Any, server_handler: Any = server_handler) -> None:
            loop.call_soon_threadsafe(election.retire)
            server_handler(signum, frame)

        signal.signal(signum, handler)
