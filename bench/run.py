#!/usr/bin/env python3
"""Benchmarks of the generated service against real uvicorn servers (not part of the test suite).

Run from the repository root:

    .venv/bin/python bench/run.py [--backend file|redis|postgres|all] [--trials 30] [--only failover,handover]
    .venv/bin/python bench/run.py --soak --minutes 3 [--backend file|redis|postgres|all] [--seed 1]

Every measurement bakes projects from this template with cookiecutter's Python API into a temporary
directory, puts the baked tests' helpers on ``sys.path`` (their ``Server``, ``RedisServer``,
``PostgresServer``, ``MailSink``, ``free_port``, ...), starts real ``python -m uvicorn ... --workers 4``
servers (own session each), and reads the workers' log lines from a pipe in a reader thread, each
stamped with this process's ``time.monotonic()`` when it is read. The redis and postgres backends run
against a redis-server or a PostgreSQL cluster of their own on a free port. Results are printed as
Markdown tables and written as JSON (default ``bench/results/latest.json``); the modules are in
``bench/harness/``. The soak adds a user's job and a slow start-up task to its baked copies'
``jobs.py`` (``harness/user_jobs.py``). ``--soak --minutes 3`` for all three backends takes about
10 minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness.project import BACKENDS, ROOT, bake_all, write_apps

DEFAULT_STEPS = "failover,crash,handover,reloads,throughput,startup,standby_cost,alert_burst"


class LoadSampler(threading.Thread):
    """The 1-minute load average every 10 s while the benchmark runs (other work on the machine)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []

    def run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            time.sleep(10)

    def summary(self) -> dict[str, Any]:
        s = self.samples or [0.0]
        return {"min": min(s), "mean": sum(s) / len(s), "max": max(s), "samples": len(s)}


def provenance() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": git("status", "--short", "--", ".").splitlines(),
        "python": sys.version.split()[0],
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    parser.add_argument("--trials", type=int, default=30, help="kill -9 failover trials per backend")
    parser.add_argument(
        "--crash-trials", type=int, default=20, help="kill -9 of the primary's server, same host, per backend"
    )
    parser.add_argument(
        "--namespace-crash-trials", type=int, default=5, help="the same, the dead server in another pid namespace"
    )
    parser.add_argument("--handover-trials", type=int, default=30, help="SIGTERM of the primary worker, per backend")
    parser.add_argument(
        "--server-trials", type=int, default=20, help="SIGTERM of the primary's server (two servers), per backend"
    )
    parser.add_argument("--reload-trials", type=int, default=10)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--only", default=DEFAULT_STEPS, help="comma-separated subset of the default-mode measurements")
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--redis-persist",
        action="store_true",
        help="soak: run redis-server with appendonly yes (as docker-compose.yml does)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    # Stop cleanly (the finally blocks stop every server) on SIGTERM, and on SIGINT even when started
    # in the background of a non-interactive shell, which ignores SIGINT.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    names = list(BACKENDS) if args.backend == "all" else [args.backend]
    out = args.out or ROOT / "bench" / "results" / ("soak.json" if args.soak else "latest.json")
    results: dict[str, Any] = {"argv": sys.argv, **provenance()}
    sampler = LoadSampler()
    sampler.start()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        projects = bake_all(sorted({"file", *names}, key=BACKENDS.index), tmp)
        if args.soak:  # the baked copies only: a user's job and a slow start-up task (user_jobs.py)
            from harness.user_jobs import add_user_jobs

            for project in projects.values():
                add_user_jobs(project)
        # Only now are the baked tests' modules importable (support, conftest, mail_sink, backend_*).
        from harness import servers
        from harness.backends import make_backend
        from harness.report import print_default, print_soak

        servers.LOG_DIR = out.parent / "logs" / out.stem
        ctx: dict[str, Any] = {"tmp": tmp, "apps": write_apps(tmp)}
        if args.soak:
            results["soak"] = []
            for backend_name in names:
                from harness.soak import soak

                backend = make_backend(backend_name, projects[backend_name], tmp, persist=args.redis_persist)
                try:
                    results["soak"].append(soak(backend, args.minutes, args.seed))
                finally:
                    backend.stop()
        else:
            run_default(args, ctx, projects, names, results)
    results["wall_seconds"] = time.monotonic() - started
    results["loadavg_1min_during_run"] = sampler.summary()
    tables = print_soak(results["soak"]) if args.soak else "\n".join(print_default(results))
    results["tables_markdown"] = tables
    load = results["loadavg_1min_during_run"]
    print(
        f"\n{results['date_utc']} UTC, commit {results['commit']} (+{len(results['uncommitted_changes'])} changed "
        f"files), wall time {results['wall_seconds']:.0f} s, 1-min load during the run "
        f"{load['min']:.2f}..{load['max']:.2f} (mean {load['mean']:.2f}); results in {out}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))


def run_default(
    args: argparse.Namespace, ctx: dict[str, Any], projects: dict[str, Path], names: list[str], results: dict[str, Any]
) -> None:
    from harness.backends import make_backend
    from harness.costs import measure_alert_burst, measure_standby_cost, measure_startup, measure_throughput
    from harness.failover import measure_crash_failover, measure_failover, measure_handover
    from harness.reloads import measure_reloads

    backends = {n: make_backend(n, projects[n], ctx["tmp"]) for n in sorted({"file", *names}, key=BACKENDS.index)}
    chosen = [backends[n] for n in names]
    try:
        steps = {
            "failover": lambda: measure_failover(ctx, chosen, args.trials),
            "crash": lambda: measure_crash_failover(
                [backends["file"], *(b for b in chosen if b.lease)], args.crash_trials, args.namespace_crash_trials
            ),
            "handover": lambda: measure_handover(chosen, args.handover_trials, args.server_trials),
            "reloads": lambda: measure_reloads(ctx, backends["file"], args.reload_trials),
            "throughput": lambda: measure_throughput(ctx, backends["file"], args.load_seconds),
            "startup": lambda: measure_startup(chosen),
            "standby_cost": lambda: measure_standby_cost(chosen),
            "alert_burst": lambda: measure_alert_burst(backends["file"]),
        }
        for step in args.only.split(","):
            print(f"== {step} (1-min load {os.getloadavg()[0]:.2f})", flush=True)
            t = time.monotonic()
            results[step] = steps[step]()
            print(f"   ({time.monotonic() - t:.0f} s)", flush=True)
    finally:
        for backend in backends.values():
            backend.stop()


if __name__ == "__main__":
    main()
