"""Failover after kill -9 and graceful hand-over, per backend (and the baseline app after kill -9).

Every latency is this process's ``time.monotonic()`` from the moment it sent the signal (or read the
old primary's demotion line) to the moment its reader thread read the successor's promotion line.
"""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from typing import Any

from support import is_alive

from .backends import LEASE_TTL, Backend
from .project import PACKAGE, base_env
from .servers import BenchServer, now, start_steady, within
from .stats import fmt, trials_summary

NONE_AFTER = 15.0  # a trial with no new primary within this long counts as "none"


def failover_trial(server: BenchServer, signum: int) -> dict[str, Any]:
    """Signal the steady primary worker; ms until a promotion line of another pid is read, and
    whether that pid was a standby already running (not the worker started in place of the dead one)."""
    primary = server.steady(30)
    if primary is None:
        raise RuntimeError(f"{server.name}: not steady before a trial\n{server.output()[-3000:]}")
    standbys = server.live_workers() - {primary}
    t0 = server.kill(primary, signum)
    t = within(lambda: server.promotion_after(t0, {primary}), NONE_AFTER)
    winner = next((pid for s, pid, p in server.timed_events() if p and s == t), None) if t else None
    return {"ms": None if t is None else (t - t0) * 1000, "standby_won": winner in standbys, "old": primary}


def baseline_server(ctx: dict[str, Any], label: str, **extra: str) -> BenchServer:
    lock = str(ctx["tmp"] / f"{label}-{uuid.uuid4().hex[:6]}.lock")
    return BenchServer("baseline", "baseline_app:app", base_env([ctx["apps"]], LOCK_PATH=lock, **extra))


def measure_failover(ctx: dict[str, Any], backends: list[Backend], trials: int) -> dict[str, Any]:
    """kill -9 of the primary worker, ``trials`` times per backend (LOCK_TTL_SECONDS=3 for the lease
    backends, default retry 1 s). Before each trial the server must again have 4 live workers and
    exactly one live primary. The file backend runs side by side with the baseline app, trial by
    trial interleaved; a baseline trial without a new primary within 15 s counts as "none" and its
    server is restarted."""
    out: dict[str, Any] = {}
    for backend in backends:
        values: list[float | None] = []
        by_standby = 0
        server = start_steady(lambda: backend.server("failover", LEASE_TTL))
        base = start_steady(lambda: baseline_server(ctx, "failover")) if backend.name == "file" else None
        base_values: list[float | None] = []
        try:
            for i in range(trials):
                trial = failover_trial(server, signal.SIGKILL)
                values.append(trial["ms"])
                by_standby += trial["standby_won"]
                note = ""
                if base is not None:
                    if base.steady(20) is None:  # the previous baseline trial left it without a primary
                        base.stop()
                        base = start_steady(lambda: baseline_server(ctx, "failover"))
                    base_values.append(failover_trial(base, signal.SIGKILL)["ms"])
                    note = f", baseline {fmt(base_values[-1])} ms"
                print(f"  failover {backend.name} {i + 1}/{trials}: {fmt(values[-1])} ms{note}", flush=True)
        finally:
            server.stop()
            if base is not None:
                base.stop()
        out[backend.name] = {**trials_summary(values), "won_by_a_running_standby": by_standby}
        if base is not None:
            out["baseline"] = trials_summary(base_values)
    if "file" in out and out["baseline"]["p50"] and out["file"]["p50"] is not None:
        out["ratio_p50_file_over_baseline"] = out["file"]["p50"] / out["baseline"]["p50"]
    return out


OTHER_PID_NAMESPACE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
"""Runs a server in a pid namespace of its own (root only): as far as pids tell, another container."""


def crash_trial(backend: Backend, env: dict[str, str], label: str, wrapper: tuple[str, ...]) -> float | None:
    """Two servers of 2 workers share a lock scope; the first (run under ``wrapper``) holds the
    primary; kill -9 of its whole process group; ms until the second's promotion line is read (None:
    none within 15 s). Both stop gracefully after: the next trial's first server takes over at once."""
    first = BenchServer(f"{backend.name}-{label}-first", f"{PACKAGE}.api:app", env, workers=2, wrapper=wrapper)
    second: BenchServer | None = None
    try:
        if within(lambda: first.line_after(0.0, True), 40.0) is None:
            raise RuntimeError(f"{first.name}: no primary after start\n{first.output()[-3000:]}")
        second = BenchServer(f"{backend.name}-{label}-second", f"{PACKAGE}.api:app", env, workers=2)
        second.wait_until_started()
        t0 = now()
        os.killpg(first.process.pid, signal.SIGKILL)  # the whole server: master and workers
        t = within(lambda: second.promotion_after(t0, set()), NONE_AFTER)
        return None if t is None else (t - t0) * 1000
    finally:
        first.stop()
        if second is not None:
            second.stop()


def measure_crash_failover(backends: list[Backend], trials: int, namespace_trials: int) -> dict[str, Any]:
    """kill -9 of the server holding the primary, another server takes over, with the default ttl:
    the two servers on the same host and pid namespace (``trials``), and the first in a pid namespace
    of its own (``namespace_trials``, as another container; only as root). The file lock runs side
    by side: the kernel frees a dead holder's lock whatever the namespace."""
    namespaces = os.geteuid() == 0 and shutil.which("unshare") is not None
    out: dict[str, Any] = {}
    for backend in backends:
        cases = {"same_host": ((), trials)}
        if namespaces:
            cases["other_pid_namespace"] = (OTHER_PID_NAMESPACE, namespace_trials)
        out[backend.name] = {}
        for case, (wrapper, count) in cases.items():
            values: list[float | None] = []
            env = backend.env(f"crash-{case}")  # no LOCK_TTL_SECONDS: the default (10 s)
            for i in range(count):
                values.append(crash_trial(backend, env, f"crash-{case}-{i + 1}", wrapper))
                print(f"  crash {backend.name} {case} {i + 1}/{count}: {fmt(values[-1])} ms", flush=True)
            out[backend.name][case] = trials_summary(values)
    if not namespaces:
        out["note"] = "not root, or no unshare(1): no pid-namespace trials"
    return out


def handover_worker(backend: Backend, trials: int) -> dict[str, Any]:
    """SIGTERM to the primary worker (uvicorn starts another in its place). Two latencies: from the
    SIGTERM, and from reading the old primary's demotion line (logged right before it releases the
    lock) to reading the successor's promotion line (the lock's own hand-over; one pipe, one reader).
    A primary still alive 10 s after its SIGTERM counts as "stuck" and is killed so the next trial
    can run."""
    server = start_steady(lambda: backend.server("handover", LEASE_TTL))
    sigterm: list[float | None] = []
    release: list[float | None] = []
    stuck: list[dict[str, Any]] = []
    try:
        for i in range(trials):
            primary = server.steady(30)
            if primary is None:
                raise RuntimeError(f"{server.name}: not steady before a trial\n{server.output()[-3000:]}")
            t0 = server.kill(primary, signal.SIGTERM)
            t = within(lambda: server.promotion_after(t0, {primary}), 10.0)
            demoted = server.line_after(t0, False, only=primary)
            sigterm.append(None if t is None else (t - t0) * 1000)
            release.append(None if t is None or demoted is None else (t - demoted) * 1000)
            if not within(lambda: not is_alive(primary), max(0.0, t0 + 10 - now()) + 0.01):
                stuck.append({"trial": i + 1, "pid": primary})
                server.kill(primary)
            print(
                f"  handover {backend.name} worker {i + 1}/{trials}: {fmt(sigterm[-1])} ms from SIGTERM, "
                f"{fmt(release[-1])} ms from the release{' (stuck, killed)' if stuck and stuck[-1]['trial'] == i + 1 else ''}",
                flush=True,
            )
    finally:
        server.stop()
    return {"from_sigterm": trials_summary(sigterm), "from_release": trials_summary(release), "stuck": stuck}


def steady_pair(servers: list[BenchServer], timeout: float = 40.0) -> tuple[BenchServer, int] | None:
    """Wait until every server has its live workers and exactly one of them all is primary."""

    def check() -> tuple[BenchServer, int] | None:
        found = [(s, pid) for s in servers for pid in s.primaries()]
        if len(found) == 1 and all(len(s.live_workers()) >= s.workers for s in servers):
            return found[0]
        return None

    return within(check, timeout)


def handover_server(backend: Backend, trials: int) -> dict[str, Any]:
    """A rolling deploy: two servers share one lock scope; SIGTERM to the master of the server that
    has the primary; latency to the other server's promotion line, from the SIGTERM and from the old
    primary's demotion line (two pipes read by two threads: a few ms of reading jitter). The stopped
    server is started again before the next trial."""
    env = backend.env("deploy", LEASE_TTL)
    count = iter(range(1000))

    def make() -> BenchServer:
        return BenchServer(f"{backend.name}-deploy-{next(count)}", f"{PACKAGE}.api:app", env)

    servers = [make(), make()]
    sigterm: list[float | None] = []
    release: list[float | None] = []
    try:
        for i in range(trials):
            found = steady_pair(servers)
            if found is None:
                raise RuntimeError(f"{backend.name}: two servers not steady\n{servers[0].output()[-3000:]}")
            old, primary = found
            other = next(s for s in servers if s is not old)
            t0 = now()
            old.signal(signal.SIGTERM)
            t = within(lambda: other.promotion_after(t0, set()), NONE_AFTER)
            old.stop()
            demoted = old.line_after(t0, False, only=primary)
            sigterm.append(None if t is None else (t - t0) * 1000)
            release.append(None if t is None or demoted is None else (t - demoted) * 1000)
            print(
                f"  handover {backend.name} server {i + 1}/{trials}: {fmt(sigterm[-1])} ms from SIGTERM, "
                f"{fmt(release[-1])} ms from the release",
                flush=True,
            )
            servers[servers.index(old)] = make()
    finally:
        for s in servers:
            s.stop()
    return {"from_sigterm": trials_summary(sigterm), "from_release": trials_summary(release)}


def measure_handover(backends: list[Backend], trials: int, server_trials: int) -> dict[str, Any]:
    """Graceful hand-over per backend: of a worker (SIGTERM to the primary worker) and of a server
    (SIGTERM to the master of the server with the primary, another server takes over)."""
    out: dict[str, Any] = {}
    for backend in backends:
        out[backend.name] = {"worker": handover_worker(backend, trials)}
        if server_trials:
            out[backend.name]["server"] = handover_server(backend, server_trials)
    return out
