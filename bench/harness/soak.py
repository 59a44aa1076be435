"""The chaos soak: faults every 3-6 s against reports every 2 s and a user's job every second, then
the primary intervals, their overlaps and gaps, the report and job counts (targets: 0 duplicates,
0 missed, 0 overlap), and readiness against the start-up task (target: never 200 before it is done)."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from mail_sink import MailSink, mail_env
from support import is_alive

from .backends import LEASE_TTL, Backend
from .project import PACKAGE
from .servers import BenchServer, now, within
from .user_jobs import ReadinessPoller, analyse_user_job, read_records, records_env

PAUSE_SECONDS = 5.0
BELIEF_SECONDS = 2.0  # how long a paused primary may still count itself primary: ttl 3 - margin 1


def soak(backend: Backend, minutes: float, seed: int) -> dict[str, Any]:
    """Faults every 3-6 s (seeded) for ``minutes`` against reports every 2 s (the tests' MailSink
    and mail_env).

    file: one server of 4 workers; redis and postgres: two servers of 4 workers sharing one lock
    scope, LOCK_TTL_SECONDS=3. Faults: kill -9 of a random worker or of the primary, HUP reload of a
    master; the lease backends also: SIGSTOP of the primary for 5 s then SIGCONT, and their server's
    faults (redis: kill -9 + start on the same port, empty unless --redis-persist; postgres: kill -9
    of the whole cluster + start, data kept; pg_terminate_backend of the holder's session). Primary
    intervals come from the role lines (read times): an interval ends at the demotion line, at the
    kill time of a killed worker, at the first time the script saw the pid dead, or for a paused
    primary at pause + (ttl - safety margin) = pause + 2 s, by when the design guarantees that it
    has stopped singleton work.

    The project also runs the bench's user job and slow start-up task (``user_jobs.py``; the
    project must have been given them with ``add_user_jobs``). The first fault is fixed: ``kill -9``
    of the primary in the middle of the start-up task, as soon as its start is recorded, so that the
    next primary has to run it again; a poller asks ``/health/ready`` throughout."""
    sink = MailSink()
    sink.start(may_move=True)
    records = backend.tmp / f"records-{backend.name}-{uuid.uuid4().hex[:6]}"
    env = backend.env("soak", LEASE_TTL, **mail_env(sink), **records_env(records))
    count = 2 if backend.lease else 1
    servers = [BenchServer(f"soak-{backend.name}-{i}", f"{PACKAGE}.api:app", env) for i in range(count)]
    poller = ReadinessPoller([s.port for s in servers])
    poller.start()
    startup_kill: dict[str, Any] = {}
    rng = random.Random(seed)
    faults: list[dict[str, Any]] = []
    pause_caps: dict[int, list[float]] = {}  # pid -> pause time + 2 s, for every pause
    death_seen: dict[int, float] = {}

    def all_primaries() -> set[int]:
        return set().union(*(s.primaries() for s in servers))

    def owner(pid: int) -> BenchServer:
        return next(s for s in servers if pid in s.roles())

    def watch(seconds: float) -> None:
        """Sleep, noting the first time each known worker is seen dead."""
        end = now() + seconds
        while now() < end:
            t = now()
            for s in servers:
                for pid in s.roles():
                    if pid not in death_seen and not is_alive(pid):
                        death_seen[pid] = t
            time.sleep(0.05)

    kinds = ["kill_random", "kill_primary", "hup"]
    if backend.lease:
        kinds += ["sigstop_primary", *backend.faults]
    start = stop_at = now()
    stop_wall = time.time()
    try:

        def started() -> bool:
            return len(all_primaries()) == 1 and all(len(s.live_workers()) >= s.workers for s in servers)

        def startup_task_begun() -> int | None:
            """The pid that recorded the start of the start-up task, once its role line is read."""
            starts = [r for r in read_records(records / "startup.jsonl") if r["event"] == "start"]
            pid = starts[0]["pid"] if starts else None
            return pid if pid is not None and any(pid in s.roles() for s in servers) else None

        pid = within(startup_task_begun, 40)
        if pid is None:
            raise RuntimeError(f"the start-up task never started:\n{servers[0].output()[-3000:]}")
        startup_kill = {"pid": pid, "at": owner(pid).kill(pid)}
        print(f"  soak {backend.name}: kill -9 of {pid}, the primary in its start-up task", flush=True)
        if not within(started, 40):
            raise RuntimeError(f"no steady start:\n{servers[0].output()[-3000:]}")
        start = now()
        end = start + minutes * 60
        while now() < end:
            watch(rng.uniform(3, 6))
            kind = rng.choice(kinds)
            fault: dict[str, Any] = {"t": now() - start, "kind": kind}
            primaries = all_primaries()
            workers = sorted(set().union(*(s.live_workers() for s in servers)))
            if kind in ("kill_primary", "sigstop_primary") and not primaries:
                fault["note"] = "no primary at that moment: killed a random worker instead"
                kind = "kill_random"
            if kind == "kill_random" and workers:
                pid = rng.choice(workers)
                owner(pid).kill(pid)
                fault["pid"] = pid
            elif kind == "kill_primary":
                pid = rng.choice(sorted(primaries))
                owner(pid).kill(pid)
                fault["pid"] = pid
            elif kind == "hup":
                s = rng.choice(servers)
                s.hup()
                fault["server"] = s.name
            elif kind == "sigstop_primary":
                pid = rng.choice(sorted(primaries))
                t = owner(pid).kill(pid, signal.SIGSTOP)
                pause_caps.setdefault(pid, []).append(t + BELIEF_SECONDS)
                fault["pid"] = pid
                watch(PAUSE_SECONDS)
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:  # uvicorn's master kills a worker that misses its health check
                    fault["note"] = "gone before SIGCONT (killed by the uvicorn master's health check)"
            elif kind in backend.faults:
                t = now()
                fault.update(backend.fault(kind))
                fault["took_s"] = now() - t
            faults.append(fault)
            print(f"  soak {backend.name} t={fault['t']:.1f}s {fault}", flush=True)
        watch(8)  # quiet tail: last reloads complete, catch-up reports go out
        stop_at, stop_wall = now(), time.time()
    finally:
        poller.stop()
        for s in servers:
            s.stop()
        time.sleep(0.5)
        sink.stop()
    result = analyse_soak(backend.name, servers, sink, faults, pause_caps, death_seen, start, stop_at)
    result |= {"minutes": minutes, "seed": seed, "redis_appendonly": getattr(backend, "persist", None)}
    result["user_job"] = analyse_user_job(records, poller, start, stop_wall)
    result["user_job"]["startup_kill"] = {**startup_kill, "at": startup_kill.get("at", start) - start}
    return result


def analyse_soak(
    name: str,
    servers: list[BenchServer],
    sink: MailSink,
    faults: list[dict[str, Any]],
    pause_caps: dict[int, list[float]],
    death_seen: dict[int, float],
    start: float,
    stop_at: float,
) -> dict[str, Any]:
    """Turn the recorded lines into primary intervals, overlaps, time without a primary, and the
    report counts (expected every 2 s from the first to the last period received)."""
    events = sorted((t, pid, p, s.name) for s in servers for t, pid, p in s.timed_events())
    epoch_lines = sorted((t, pid, epoch) for s in servers for t, pid, epoch in s.epochs)

    def epoch_of(pid: int, since: float) -> int | None:
        """The epoch a primary logged right after the promotion read at ``since``."""
        return next((e for t, p, e in epoch_lines if p == pid and t >= since - 0.001), None)

    killed = {pid: t for s in servers for pid, t in s.killed.items()}
    intervals: list[dict[str, Any]] = []
    open_: dict[int, float] = {}
    for t, pid, primary, _ in events:
        if primary and pid not in open_:
            open_[pid] = t
        elif not primary and pid in open_:
            intervals.append({"pid": pid, "start": open_.pop(pid), "end": t, "end_by": "demotion line"})
    for pid, t in open_.items():
        intervals.append({"pid": pid, "start": t, "end": stop_at, "end_by": "still primary at stop"})
    for iv in intervals:  # earlier ends that the log cannot show
        pid = iv["pid"]
        ends = [(killed.get(pid), "kill -9"), (death_seen.get(pid), "seen dead")]
        ends += [(cap, "SIGSTOP + 2 s") for cap in pause_caps.get(pid, [])]
        for t, why in ends:
            if t is not None and iv["start"] <= t < iv["end"]:
                iv["end"], iv["end_by"] = t, why
        iv["epoch"] = epoch_of(pid, iv["start"])
    intervals.sort(key=lambda iv: iv["start"])
    # Sweep: time with 0 and with >= 2 primaries, from the first promotion to the stop.
    points = sorted([(iv["start"], 1) for iv in intervals] + [(iv["end"], -1) for iv in intervals])
    level, last, none_time, overlap_time = 0, None, 0.0, 0.0
    overlaps: list[dict[str, float]] = []
    gaps: list[float] = []
    for t, delta in points:
        if last is not None and t > last:
            if level == 0:
                none_time += t - last
                gaps.append(t - last)
            elif level >= 2:
                overlap_time += t - last
                overlaps.append({"at_s": last - start, "seconds": t - last})
        level += delta
        last = t
    if last is not None and last < stop_at and level == 0:
        none_time += stop_at - last
    periods = sink.periods()  # every report received, duplicates included (the tests' reading)
    counts = Counter(periods)
    missed: list[str] = []
    expected = 0
    if counts:
        p, last_period = min(counts), max(counts)
        while p <= last_period:
            expected += 1
            if p not in counts:
                missed.append(p.strftime("%H:%M:%S"))
            p += timedelta(seconds=2)
    duplicates = {p.strftime("%H:%M:%S"): n for p, n in counts.items() if n > 1}
    logs = "".join(s.output() for s in servers)
    return {
        "backend": name,
        "servers": len(servers),
        "faults": faults,
        "fault_counts": dict(Counter(f["kind"] for f in faults)),
        "role_changes": [
            {"t": t - start, "pid": pid, "primary": p, "server": server, "epoch": epoch_of(pid, t) if p else None}
            for t, pid, p, server in events
        ],
        "intervals": [{**iv, "start": iv["start"] - start, "end": iv["end"] - start} for iv in intervals],
        "periods_expected": expected,
        "reports_delivered": len(periods),
        "distinct_periods": len(counts),
        "duplicates": duplicates,
        "missed": missed,
        "time_without_primary_s": none_time,
        "longest_gap_s": max(gaps, default=0.0),
        "overlap_s": overlap_time,
        "overlaps": overlaps,
        "tracebacks_in_logs": logs.count("Traceback"),
        "error_lines_in_logs": sum(1 for line in logs.splitlines() if " ERROR " in line or "ERROR:" in line),
        "note": "interval end of a SIGSTOPped primary = pause + 2 s (ttl 3 - safety margin 1), the "
        "design's guarantee; a killed worker's interval ends at its kill time; times are when "
        "this script read the lines (two servers = two pipes, so ms-scale overlaps across "
        "servers can be reading jitter).",
    }
