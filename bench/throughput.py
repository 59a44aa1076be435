#!/usr/bin/env python3
"""Maximum throughput of GET /health with wrk: the generated service vs the same app without coordination.

Run from the repository root, on Linux (it reads /proc), with wrk on PATH (Debian: ``apt-get install wrk``):

    .venv/bin/python bench/throughput.py [--rounds 3] [--seconds 10] [--backend file|redis|postgres] [--quiet 15] [--out t.json]

It bakes this template with cookiecutter's Python API into a temporary directory, writes a plain
FastAPI module with the same ``GET /health`` (no lifespan, nothing else), and starts both with
``python -m uvicorn <module>:app --workers 4`` (each in its own process group; both stay up, only one
is under load at a time). Runs are interleaved, ours then plain, for ``--rounds`` rounds, each after
a short wrk warm-up. Besides wrk's numbers, each run records the CPU time the server's processes used,
as microseconds per request, and the CPU that other processes used meanwhile (noise): on a small shared
machine req/s depends as much on how the cores are shared with wrk and with anything else running.

``--request-metrics`` compares other servers instead: the baked app as it is against the same app with
each candidate of request metrics (``harness/request_metrics.py``), all in prometheus-client's
multiprocess mode; run it with a Python that has the candidates installed besides the template's
development requirements (those not installed are left out):

    python bench/throughput.py --request-metrics [--rounds 6] [--quiet 15] [--asgi-rounds 8] [--out rm.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.project import bake, use_baked_tests

CLK_TCK = os.sysconf("SC_CLK_TCK")
MEDIAN_KEYS = ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_req", "other_cpu_pct")
# The route exactly as in the generated api.py, return annotation included: with it FastAPI serializes
# through pydantic, without it through jsonable_encoder, about 4-5 µs more per request (fastapi 0.165).
PLAIN_APP = '''"""FastAPI without any coordination: the throughput reference."""
from fastapi import FastAPI

app = FastAPI()


@app.api_route("/health", methods=["GET", "HEAD"])
async def health() -> dict[str, str]:
    return {"status": "ok"}
'''


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition()`` every 50 ms until it is true; exit with a message after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Server:
    """``python -m uvicorn <app> --workers N`` in its own process group, its output in a log file.

    Not the generated tests' ``Server`` (which harness.servers.BenchServer extends): that one reads
    the output through a pipe in a thread of this process, which would compete for the two cores with
    the servers and wrk while they are measured, and it cannot pin the server to a core (--pin).
    """

    def __init__(
        self, name: str, app: str, env: dict[str, str], tmp: Path, workers: int, cpus: set[int] | None = None
    ) -> None:
        from support import free_port  # the baked tests' (importable once baked)

        self.name, self.port, self.log = name, free_port(), tmp / f"{name}.log"
        argv = [sys.executable, "-m", "uvicorn", app, "--workers", str(workers), "--no-access-log"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                argv,
                cwd=tmp,
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def answers(self) -> bool:
        if self.process.poll() is not None:
            sys.exit(f"{self.name} exited with status {self.process.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                return bool(response.status == 200 and json.load(response) == {"status": "ok"})
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU time of every live process in the server's group (master and workers)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.process.pid:  # field 5, the process group
                    total += int(fields[11]) + int(fields[12])  # fields 14 and 15, utime and stime
        return total / CLK_TCK

    def stop(self) -> None:
        """SIGTERM to the whole group, then SIGKILL to whatever is left after 15 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_lock_server(backend: str) -> tuple[Any, dict[str, str]]:
    """The server a lease backend needs, started as the generated tests start theirs (the baked
    tests' RedisServer or PostgresServer, on a free port), and the settings that point ours at it."""
    if backend == "redis":
        from backend_redis import RedisServer

        directory = Path(tempfile.mkdtemp(prefix="throughput-redis-"))
        redis = RedisServer(directory)
        return redis, {"REDIS_URL": redis.url, "LOCK_KEY_PREFIX": "throughput"}
    from backend_postgres import PostgresServer

    postgres = PostgresServer()
    return postgres, {"DATABASE_URL": postgres.url, "LOCK_KEY_PREFIX": "throughput"}


def milliseconds(text: str) -> float:
    """wrk's '512.00us', '1.23ms' or '1.05s' in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


WRK_CPUS: set[int] | None = None
"""With --pin, the cores wrk may use (the servers get the others)."""


def wrk(url: str, seconds: int, threads: int, connections: int) -> dict[str, Any]:
    """One wrk run (whole seconds only: wrk rejects -d0.5s); req/s, latency percentiles (ms), errors."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    pin = (lambda: os.sched_setaffinity(0, WRK_CPUS)) if WRK_CPUS else None
    out = subprocess.run(argv, capture_output=True, text=True, check=True, preexec_fn=pin).stdout
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "requests": int(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
        **{f"p{q}_ms": milliseconds(latency[q]) for q in ("50", "75", "90", "99")},
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
    }


def busy_seconds() -> float:
    """CPU time the whole machine spent busy since boot, all cores (the first line of /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU time of this script's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_quiet(limit: float, timeout: float = 600.0) -> float:
    """Wait until the machine has been busy less than ``limit`` % of one core for 5 s (at most
    ``timeout`` s, then go on anyway); return how long we waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = busy_seconds()
        time.sleep(5)
        if (busy_seconds() - before) / 5 * 100 < limit:
            break
    return time.monotonic() - start


def round_line(run: dict) -> str:
    """One measured round, as both modes print it."""
    return (
        f"{run['req_per_s']:6.0f} req/s, p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, "
        f"server CPU {run['cpu_us_per_req']:.0f} µs/req, "
        f"other processes {run['other_cpu_pct']:.0f}% of a core, "
        f"errors {run['socket_errors'] + run['non_2xx']}, "
        f"waited {run['waited_for_quiet_s']:.0f} s for quiet"
    )


def measure(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then one measured wrk run, with the CPU time of the server, of wrk, and of the rest
    of the machine (other processes: noise) during it."""
    waited = wait_until_quiet(args.quiet) if args.quiet else 0.0
    if args.warmup:
        wrk(server.url, args.warmup, args.threads, args.connections)
    before = server.cpu_seconds(), children_cpu_seconds(), busy_seconds(), time.monotonic()
    result = wrk(server.url, args.seconds, args.threads, args.connections)
    after = server.cpu_seconds(), children_cpu_seconds(), busy_seconds(), time.monotonic()
    server_cpu, wrk_cpu, busy, wall = (b - a for a, b in zip(before, after, strict=True))
    result["server_cpu_s"], result["wrk_cpu_s"] = server_cpu, wrk_cpu
    result["cpu_us_per_req"] = server_cpu / max(result["requests"], 1) * 1e6
    # Busy time of everything else, in % of one core: this script's polling is a fraction of a percent.
    result["other_cpu_pct"] = max(0.0, busy - server_cpu - wrk_cpu) / wall * 100
    result["waited_for_quiet_s"] = waited
    return result


ASGI_CHILD = """
import asyncio, sys, time

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
         "path": "/health", "raw_path": b"/health", "root_path": "", "query_string": b"",
         "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}


async def main(module: str, calls: int) -> None:
    app = __import__(module, fromlist=["app"]).app
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async with app.router.lifespan_context(app):  # ours: this process takes part in the election
        await asyncio.sleep(0.3)
        chunks = []
        for _ in range(calls // 1000 + 2):  # the fastest chunk of 1000: the least disturbed
            started = time.process_time()
            for _ in range(1000):
                await app(dict(SCOPE), receive, send)
            chunks.append(time.process_time() - started)
            sent.clear()
        print(min(chunks[2:]) / 1000 * 1e6)


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def asgi_cost(src: Path, apps: Path, tmp: Path, rounds: int, package: str) -> dict[str, list[float]]:
    """CPU time per GET /health through each app alone (no server, no network), in a process of its
    own: plain, ours as the primary, ours as a standby (the lock held by this script)."""
    (apps / "asgi_child.py").write_text(ASGI_CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(apps)]), LOG_LEVEL="WARNING")
    held = tmp / "held" / "primary.lock"
    held.parent.mkdir(mode=0o700)
    holder = os.open(held, os.O_RDWR | os.O_CREAT, 0o600)
    os.write(holder, f"{os.getpid()}\nhost=bench\nsince=2026-01-01T00:00:00+00:00\nepoch=1\n".encode())
    fcntl.flock(holder, fcntl.LOCK_EX)
    cases = {
        "plain": ("plain_app", {}),
        "ours (primary)": (f"{package}.api", {"LOCK_PATH": str(tmp / f"free-{rounds}" / "primary.lock")}),
        "ours (standby)": (f"{package}.api", {"LOCK_PATH": str(held)}),
    }
    costs: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for i in range(rounds):
            for name, (module, extra) in cases.items():
                if "primary" in name:
                    extra = {"LOCK_PATH": str(tmp / f"free-{i}" / "primary.lock")}  # a lock nobody holds
                argv = [sys.executable, str(apps / "asgi_child.py"), module, "20000"]
                out = subprocess.run(argv, env=env | extra, capture_output=True, text=True, check=True, cwd=tmp)
                costs[name].append(float(out.stdout.split()[-1]))
    finally:
        os.close(holder)
    return costs


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu[1] if cpu else platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **{name: version(name) for name in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools")},
        "wrk": (wrk_version.stdout or wrk_version.stderr).split(" Copyright")[0].removeprefix("wrk "),
        "loadavg_at_start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: one row per run, then the medians of each app."""
    lines = [
        "| round | app | req/s | p50 (ms) | p99 (ms) | server CPU (µs/req) | other processes (% of a core) | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for i in range(len(next(iter(runs.values())))):
        for name, run in ((name, runs[name][i]) for name in runs):
            row = f"{run['req_per_s']:.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f}"
            row += f" | {run['cpu_us_per_req']:.0f} | {run['other_cpu_pct']:.0f}"
            lines.append(f"| {i + 1} | {name} | {row} | {run['socket_errors'] + run['non_2xx']} |")
    for name, values in runs.items():
        med = {key: statistics.median(run[key] for run in values) for key in MEDIAN_KEYS}
        lines.append(
            f"| median | **{name}** | **{med['req_per_s']:.0f}** | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} "
            f"| {med['cpu_us_per_req']:.0f} | {med['other_cpu_pct']:.0f} | |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per app, interleaved (default 3)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each measured wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="wrk warm-up before each run, seconds (default 2)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--backend", choices=["file", "redis", "postgres"], default="file", help="lock backend of ours")
    parser.add_argument(
        "--quiet",
        type=float,
        metavar="PCT",
        help="on a shared machine: before each run, wait (10 min at most) until everything running "
        "uses less than PCT%% of one core over 5 s",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run wrk on the first core and the servers on the others, so that they do not compete",
    )
    parser.add_argument(
        "--asgi-rounds",
        type=int,
        default=5,
        help="rounds of the measurement without server and network: CPU per request of each app (default 5)",
    )
    parser.add_argument(
        "--request-metrics",
        action="store_true",
        help="instead of ours vs plain: ours as it is vs ours with each candidate of request metrics "
        "(harness/request_metrics.py; those whose package is not installed are left out), file backend",
    )
    parser.add_argument("--out", type=Path, help="write the raw numbers as JSON to this file")
    args = parser.parse_args()
    if args.request_metrics and args.backend != "file":
        sys.exit("--request-metrics measures the file backend only")
    server_cpus = None
    if args.pin:
        global WRK_CPUS
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            sys.exit("--pin needs at least two cores")
        WRK_CPUS, server_cpus = {cores[0]}, set(cores[1:])
    if not shutil.which("wrk"):
        sys.exit("wrk is not on PATH: install it (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))  # run the finally blocks below

    info = machine()
    print("machine: " + ", ".join(f"{key}={value}" for key, value in info.items()), flush=True)
    if args.request_metrics:
        request_metrics(args, info, server_cpus)
        return
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "plain": []}
    servers: list[Server] = []
    lock_server: Any = None
    with tempfile.TemporaryDirectory(prefix="throughput-") as name:
        tmp = Path(name)
        try:
            project = bake(args.backend, tmp)
            use_baked_tests([project])  # free_port, RedisServer, PostgresServer of the baked tests
            src = project / "src"
            package = next(src.glob("*/api.py")).parent.name
            (tmp / "apps").mkdir()
            (tmp / "apps" / "plain_app.py").write_text(PLAIN_APP)
            # Both servers get the same environment (minus our settings from the caller's environment);
            # ours also gets its lock settings.
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("LOCK_", "REDIS_", "DATABASE_", "SMTP_", "ALERT_"))
            }
            env["PYTHONPATH"] = os.pathsep.join([str(src), str(tmp / "apps")])
            lock = {"LOCK_PATH": str(tmp / "locks" / "primary.lock")}
            if args.backend != "file":
                lock_server, lock = start_lock_server(args.backend)
            ours = Server("ours", f"{package}.api:app", env | lock, tmp, args.workers, server_cpus)
            plain = Server("plain", "plain_app:app", env, tmp, args.workers, server_cpus)
            servers += [ours, plain]
            for server in servers:
                wait_for(server.answers, 60, f"{server.name} to answer {server.url}")
            # The file lock promotes the first worker at once; a new Redis or PostgreSQL lock scope waits
            # out one lease (8 s).
            wait_for(lambda: "primary=True" in ours.log.read_text(), 30, "a primary=True line in ours' log")
            for i in range(args.rounds):
                for server in (ours, plain):
                    run = measure(server, args)
                    runs[server.name].append(run)
                    print(f"round {i + 1}/{args.rounds} {server.name:5}: {round_line(run)}", flush=True)
            primaries = ours.log.read_text().count("primary=True")
            for server in servers:
                server.stop()
            servers.clear()
            # The app-alone measurement holds and frees a lock file by hand: file backend only.
            asgi = {}
            if args.asgi_rounds and args.backend == "file":
                asgi = asgi_cost(src, tmp / "apps", tmp, args.asgi_rounds, package)
        finally:
            for server in servers:
                server.stop()
            if lock_server is not None:
                lock_server.stop()
                if hasattr(lock_server, "remove"):
                    lock_server.remove()

    medians = {name: statistics.median(run["req_per_s"] for run in values) for name, values in runs.items()}
    paired = [o["req_per_s"] / p["req_per_s"] for o, p in zip(runs["ours"], runs["plain"], strict=True)]
    ratio = medians["ours"] / medians["plain"]
    # The same comparison from the CPU cost per request (plain's over ours': above 1 means ours is cheaper).
    cpu = {name: statistics.median(run["cpu_us_per_req"] for run in values) for name, values in runs.items()}
    print(f"\nGET /health, wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.workers} workers each")
    print(table(runs))
    print(f"\nratio of medians ours/plain: {ratio:.3f} (per round: {', '.join(f'{r:.3f}' for r in paired)})")
    print(f"server CPU per request, plain/ours: {cpu['plain'] / cpu['ours']:.3f}")
    print(f"primary=True lines in ours' log: {primaries} (1 means no role change during the runs)")
    if asgi:
        # Each process runs either fast (about 34 µs here) or slow (about 55 µs), whichever app it is:
        # memory layout, not the app. The fastest process of each app is the fair comparison.
        print("\nThe app alone (ASGI calls in one process, no server, no network), CPU per request:")
        for name, values in asgi.items():
            runs = ", ".join(f"{value:.2f}" for value in values)
            print(f"  {name:15} fastest {min(values):6.2f} µs, median {statistics.median(values):6.2f} µs  ({runs})")
    if args.out:
        result = {"argv": sys.argv, "machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
        result |= {"runs": runs, "median_req_per_s": medians, "ratio_ours_over_plain": ratio, "paired": paired}
        result |= {"median_cpu_us_per_req": cpu, "asgi_us_per_request": asgi}
        args.out.write_text(json.dumps(result, indent=1))
        print(f"raw numbers in {args.out}")


def request_metrics(args: argparse.Namespace, info: dict[str, Any], server_cpus: set[int] | None) -> None:
    """``--request-metrics``: the baked app as it is ("none") vs each candidate, one server of
    ``--workers`` each (a lock file of its own), loaded one at a time, interleaved per round; then the
    app alone (ASGI calls in one process) per variant; then the ratios to "none"."""
    from harness import request_metrics as rm

    names, missing = rm.available()
    if missing:
        print(f"left out (package not installed here): {', '.join(missing)}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    servers: list[Server] = []
    exposed: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="throughput-") as name:
        tmp = Path(name)
        try:
            project = bake("file", tmp)
            use_baked_tests([project])
            src = project / "src"
            package = next(src.glob("*/api.py")).parent.name
            apps = tmp / "apps"
            apps.mkdir()
            targets = rm.write_variants(apps, package, names)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCK_", "PROMETHEUS_"))}
            env["PYTHONPATH"] = os.pathsep.join([str(src), str(apps)])
            for variant, target in targets.items():
                lock = {"LOCK_PATH": str(tmp / f"locks-{variant}" / "primary.lock")}
                servers.append(Server(variant, target, env | lock, tmp, args.workers, server_cpus))
            for server in servers:
                wait_for(server.answers, 60, f"{server.name} to answer {server.url}")
                wait_for(lambda: "primary=True" in server.log.read_text(), 30, f"a primary in {server.name}'s log")
            for i in range(args.rounds):
                for server in servers:
                    run = measure(server, args)
                    runs[server.name].append(run)
                    print(f"round {i + 1}/{args.rounds} {server.name:18}: {round_line(run)}", flush=True)
            exposed = {server.name: rm.exposes(server.port, server.name) for server in servers}
            for server in servers:
                server.stop()
            servers.clear()
            modules = {variant: target.split(":")[0] for variant, target in targets.items()}
            asgi = asgi_cost_variants(src, apps, tmp, args.asgi_rounds, modules) if args.asgi_rounds else {}
        finally:
            for server in servers:
                server.stop()

    base = names[0]
    medians = {n: statistics.median(run["req_per_s"] for run in values) for n, values in runs.items()}
    cpu = {n: statistics.median(run["cpu_us_per_req"] for run in values) for n, values in runs.items()}
    print(f"\nGET /health, wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, {args.workers} workers each")
    print(table(runs))
    print(f"\nagainst {base!r} (1.000 = the same; the target is at least 0.970):")
    comparison: dict[str, dict[str, Any]] = {}
    for n in names[1:]:
        paired = [v["req_per_s"] / b["req_per_s"] for v, b in zip(runs[n], runs[base], strict=True)]
        comparison[n] = {
            "ratio_of_median_req_per_s": medians[n] / medians[base],
            "median_of_paired_ratios": statistics.median(paired),
            "paired": paired,
            "cpu_per_request_ratio": cpu[base] / cpu[n],
        }
        if asgi:
            comparison[n]["asgi_fastest_ratio"] = min(asgi[base]) / min(asgi[n])
            comparison[n]["asgi_median_ratio"] = statistics.median(asgi[base]) / statistics.median(asgi[n])
        c = comparison[n]
        print(
            f"  {n:18} req/s, ratio of medians {c['ratio_of_median_req_per_s']:.3f}, median of paired ratios "
            f"{c['median_of_paired_ratios']:.3f} (per round: {', '.join(f'{r:.3f}' for r in paired)}); "
            f"server CPU per request, none/{n}: {c['cpu_per_request_ratio']:.3f}"
            + (
                f"; app alone, none/{n}: fastest {c['asgi_fastest_ratio']:.3f}, median {c['asgi_median_ratio']:.3f}"
                if asgi
                else ""
            )
        )
    print(f"request metrics in GET /metrics (none: none of them): {exposed}")
    if asgi:
        print("\nThe app alone (ASGI calls in one process, no server, no network), CPU per request:")
        for n, values in asgi.items():
            line = ", ".join(f"{value:.2f}" for value in values)
            print(f"  {n:18} fastest {min(values):6.2f} µs, median {statistics.median(values):6.2f} µs  ({line})")
    if args.out:
        result = {"argv": sys.argv, "machine": info, "args": {k: str(v) for k, v in vars(args).items()}}
        result |= {"left_out": missing, "runs": runs, "median_req_per_s": medians, "median_cpu_us_per_req": cpu}
        result |= {"comparison": comparison, "asgi_us_per_request": asgi, "request_metrics_exposed": exposed}
        result |= {"versions": {p: _version(p) for p in ("prometheus-client", *REQUEST_METRICS_PACKAGES)}}
        args.out.write_text(json.dumps(result, indent=1))
        print(f"raw numbers in {args.out}")


REQUEST_METRICS_PACKAGES = ("prometheus-fastapi-instrumentator", "starlette-exporter")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def asgi_cost_variants(
    src: Path, apps: Path, tmp: Path, rounds: int, modules: dict[str, str]
) -> dict[str, list[float]]:
    """CPU time per GET /health through each variant's app alone (as ``asgi_cost``), each process the
    primary of a lock file of its own, with a multiprocess directory of its own."""
    (apps / "asgi_child.py").write_text(ASGI_CHILD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCK_", "PROMETHEUS_"))}
    env |= {"PYTHONPATH": os.pathsep.join([str(src), str(apps)]), "LOG_LEVEL": "WARNING"}
    costs: dict[str, list[float]] = {name: [] for name in modules}
    for i in range(rounds):
        for name, module in modules.items():
            scratch = tmp / f"asgi-{name}-{i}"
            (scratch / "metrics").mkdir(parents=True)
            extra = {"LOCK_PATH": str(scratch / "primary.lock"), "PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics")}
            argv = [sys.executable, str(apps / "asgi_child.py"), module, "20000"]
            out = subprocess.run(argv, env=env | extra, capture_output=True, text=True, check=True, cwd=tmp)
            costs[name].append(float(out.stdout.split()[-1]))
    return costs


if __name__ == "__main__":
    main()
