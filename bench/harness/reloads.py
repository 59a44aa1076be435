"""HUP reloads of the uvicorn master: ours (file backend) vs the baseline app, side by side."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from support import is_alive

from .backends import Backend
from .failover import baseline_server
from .project import PACKAGE
from .servers import BenchServer, start_steady, within


def reload_trial_pair(servers: list[BenchServer], makers: list[Callable[[], BenchServer]]) -> list[str]:
    """HUP every server at once; when each reload is complete (old pids gone, 4 new live workers),
    poll up to 3 s for a primary among the new workers. Outcome per server: primary / none / two."""
    olds = []
    for i, server in enumerate(servers):
        if server.steady(20) is None:  # a previous trial left it without a primary: start afresh
            server.stop()
            servers[i] = server = start_steady(makers[i])
        olds.append(server.live_workers())
    for server in servers:
        server.hup()
    outcomes = []
    for server, old in zip(servers, olds):

        def complete() -> bool:
            return not any(is_alive(p) for p in old) and len(server.live_workers() - old) >= server.workers

        if not within(complete, 90):
            outcomes.append("incomplete")
            continue
        got = within(lambda: server.primaries() - old, 3.0)
        outcomes.append("none" if not got else ("two" if len(server.primaries()) > 1 else "primary"))
    return outcomes


def measure_reloads(ctx: dict[str, Any], file_backend: Backend, trials: int) -> dict[str, Any]:
    """HUP reloads of the uvicorn master (uvicorn starts each new worker, waits until it is ready,
    then stops the old one). Counted: reloads that end with NO primary. Ours (file backend) and the
    baseline run side by side and are HUPed at the same moment. Plain, and with a slow shutdown
    (SLOW_EXIT_SECONDS=2: ours via the tests' apps:slow_exit_app --factory, the baseline sleeps in its
    lifespan shutdown while still holding its lock)."""
    results: dict[str, Any] = {}
    for variant, slow in (("plain", "0"), ("slow_exit", "2")):

        def ours() -> BenchServer:
            env = file_backend.env("reload", SLOW_EXIT_SECONDS=slow)
            if slow == "0":
                return BenchServer("ours-file", f"{PACKAGE}.api:app", env)
            return BenchServer("ours-file", "apps:slow_exit_app", env, extra=("--factory",))

        def baseline() -> BenchServer:
            return baseline_server(ctx, "reload", SLOW_EXIT_SECONDS=slow)

        makers = [ours, baseline]
        servers = [start_steady(ours), start_steady(baseline)]
        counts: list[Counter[str]] = [Counter(), Counter()]
        try:
            for i in range(trials):
                outcome = reload_trial_pair(servers, makers)
                for c, o in zip(counts, outcome):
                    c[o] += 1
                print(f"  reload {variant} {i + 1}/{trials}: ours {outcome[0]}, baseline {outcome[1]}", flush=True)
        finally:
            for s in servers:
                s.stop()
        results[variant] = {"ours_file": dict(counts[0]), "baseline": dict(counts[1]), "trials": trials}
    return results
