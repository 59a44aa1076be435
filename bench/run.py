#!/usr/bin/env python3
"""Benchmarks of the generated service against real uvicorn servers (not part of the test suite).

Run from the repository root:

    .venv/bin/python bench/run.py [--trials 30] [--reload-trials 10] [--load-seconds 5]
    .venv/bin/python bench/run.py --soak --minutes 3 [--backend file|redis|both] [--seed 1]

Every measurement bakes projects from this template with cookiecutter's Python API into a temporary
directory, starts real ``python -m uvicorn ... --workers 4`` servers (own process group each), and
reads the workers' log lines from a pipe in a reader thread, stamping each with this script's own
``time.monotonic()`` when it is read. Redis measurements use a redis-server of their own on a free
port. Results are printed as tables and written as JSON (default ``bench/results/latest.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "my_service"  # package of the default project name "My Service"
ROLE_LINE = re.compile(r"Worker (?:startup|role change): pid=(\d+), primary=(True|False)")
EPOCH_LINE = re.compile(r"Singleton jobs start on the primary \(pid=(\d+), epoch=(\d+)\)")
REPORT_ID = re.compile(r"<report\.(\d{8}T\d{6}Z)\.")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOG_DIR: Path | None = None  # set by main(): where each stopped server's log is written
NONE_AFTER = 15.0  # a failover trial with no new primary within this long counts as "none"


# -- small helpers -------------------------------------------------------------------------------


def now() -> float:
    return time.monotonic()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_alive(pid: int) -> bool:
    """A running process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError, IndexError):
        return False
    return state != "Z"


def wait_until(condition: Callable[[], Any], timeout: float, step: float = 0.01) -> Any:
    """Poll ``condition`` until truthy (returned) or the deadline (returns None)."""
    deadline = now() + timeout
    while True:
        result = condition()
        if result:
            return result
        if now() > deadline:
            return None
        time.sleep(step)


def pct(values: list[float], q: float) -> float | None:
    """Percentile by nearest rank (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"\n### {title}\n", "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# -- projects, apps, servers ----------------------------------------------------------------------


def bake(backend: str, tmp: Path) -> Path:
    """Bake the template with ``lock_backend=backend``; return the project directory."""
    from cookiecutter.main import cookiecutter

    out = tmp / f"baked-{backend}"
    out.mkdir(exist_ok=True)
    return Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(out), extra_context={"lock_backend": backend}))


BASELINE_APP = '''
"""The original guide's pattern: one non-blocking flock attempt per worker at start-up, no retry."""
import asyncio, fcntl, os
from contextlib import asynccontextmanager
from fastapi import FastAPI

@asynccontextmanager
async def lifespan(app):
    fd = open(os.environ["LOCK_PATH"], "a")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        primary = True
    except OSError:
        primary = False
    print(f"Worker startup: pid={os.getpid()}, primary={primary}", flush=True)
    yield
    await asyncio.sleep(float(os.environ.get("SLOW_EXIT_SECONDS", "0")))
    fd.close()

app = FastAPI(lifespan=lifespan)

@app.get("/health")
async def health():
    return {"status": "ok"}
'''

PLAIN_APP = '''
"""FastAPI without any coordination: the throughput reference."""
from fastapi import FastAPI

app = FastAPI()

@app.get("/health")
async def health():
    return {"status": "ok"}
'''


def write_apps(tmp: Path) -> Path:
    """Write the baseline and plain app modules into ``tmp/apps``; return that directory."""
    directory = tmp / "apps"
    directory.mkdir(exist_ok=True)
    (directory / "baseline_app.py").write_text(textwrap.dedent(BASELINE_APP))
    (directory / "plain_app.py").write_text(textwrap.dedent(PLAIN_APP))
    return directory


def base_env(pythonpath: list[Path], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCK_", "REDIS_", "SMTP_", "EMAIL_"))}
    env.update(PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def project_env(project: Path, **extra: str) -> dict[str, str]:
    return base_env([project / "src", project / "tests"], **extra)


class Server:
    """A uvicorn master (own session) and every role/epoch line its workers log, with read times."""

    def __init__(
        self, name: str, app: str, env: dict[str, str], cwd: Path, workers: int = 4, extra: tuple[str, ...] = ()
    ) -> None:
        self.name, self.workers, self.port = name, workers, free_port()
        self.events: list[tuple[float, int, bool]] = []  # (read time, pid, primary)
        self.epochs: list[tuple[float, int, int]] = []  # (read time, pid, epoch)
        self.killed: dict[int, float] = {}  # pid -> when this script killed it
        self.lines: list[str] = []
        self._lock = threading.Lock()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--no-access-log",
            *extra,
        ]
        self.started_at = now()
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            seen = now()
            with self._lock:
                if len(self.lines) < 20000:
                    self.lines.append(line)
                if m := ROLE_LINE.search(line):
                    self.events.append((seen, int(m[1]), m[2] == "True"))
                elif m := EPOCH_LINE.search(line):
                    self.epochs.append((seen, int(m[1]), int(m[2])))

    def roles(self) -> dict[int, bool]:
        with self._lock:
            return {pid: primary for _, pid, primary in self.events}

    def live_workers(self) -> set[int]:
        return {pid for pid in self.roles() if is_alive(pid)}

    def primaries(self) -> set[int]:
        return {pid for pid, primary in self.roles().items() if primary and is_alive(pid)}

    def promotion_after(self, since: float, exclude: set[int]) -> float | None:
        """Read time of the first primary=True line read after ``since`` from a pid not in ``exclude``."""
        with self._lock:
            return next((t for t, pid, p in self.events if p and t >= since and pid not in exclude), None)

    def steady(self, timeout: float = 30.0) -> int | None:
        """Wait until ``workers`` live workers and exactly one live primary; return the primary."""

        def check() -> int | None:
            primaries = self.primaries()
            if len(primaries) == 1 and len(self.live_workers()) >= self.workers:
                return next(iter(primaries))
            return None

        return wait_until(check, timeout)

    def kill(self, pid: int, signum: int = signal.SIGKILL) -> float:
        t = now()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
        if signum == signal.SIGKILL:
            self.killed[pid] = t
        return t

    def hup(self) -> float:
        t = now()
        self.process.send_signal(signal.SIGHUP)
        return t

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the master, then SIGKILL to whatever is left of its process group."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if LOG_DIR is not None:  # keep the whole log as evidence (bench/results/logs/)
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            (LOG_DIR / f"{self.name}-{self.port}.log").write_text(self.output())

    def output(self) -> str:
        with self._lock:
            return "".join(self.lines)


class Redis:
    """A redis-server of our own on a free port, no persistence (a restart starts empty)."""

    def __init__(self, directory: Path, persist: bool = False) -> None:
        self.directory, self.port, self.persist = directory, free_port(), persist
        directory.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=2)

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--dir",
            str(self.directory),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        client = self.client()

        def answers() -> bool:
            try:
                return bool(client.ping())
            except Exception:
                return False

        if not wait_until(answers, 20, 0.02):
            raise RuntimeError("redis-server did not start")
        client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)


class MailSink:
    """aiosmtpd handler keeping (Message-ID, read time) of every delivered message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.messages: list[tuple[str, float]] = []
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        message = message_from_bytes(envelope.content)
        with self._lock:
            self.messages.append((str(message["Message-ID"] or ""), now()))
        return "250 Message accepted"

    def ids(self) -> list[str]:
        with self._lock:
            return [mid for mid, _ in self.messages]

    def stop(self) -> None:
        self.controller.stop()


def start_steady(make: Callable[[], Server], timeout: float = 40.0) -> Server:
    server = make()
    if server.steady(timeout) is None:
        out = server.output()[-3000:]
        server.stop()
        raise RuntimeError(f"{server.name}: no steady state after start\n{out}")
    return server


# -- 1 + 2: failover after kill -9 and graceful hand-over, ours vs baseline ------------------------


def failover_trial(server: Server, signum: int) -> float | None:
    """Signal the steady primary; ms until a line of another pid announcing primary=True is read."""
    primary = server.steady(30)
    if primary is None:
        raise RuntimeError(f"{server.name}: not steady before a trial")
    t0 = server.kill(primary, signum)
    t = wait_until(lambda: server.promotion_after(t0, {primary}), NONE_AFTER, 0.002)
    return None if t is None else (t - t0) * 1000


def measure_failover(ctx: dict[str, Any], trials: int) -> dict[str, Any]:
    """Failover latency: from kill -9 (SIGTERM for the hand-over) of the primary worker to reading
    the successor's promotion line. (a) file backend and the baseline app, interleaved trial by
    trial on two servers that run side by side; (b) redis crash with LOCK_TTL_SECONDS=3 and the
    default 1 s retry; (c) redis graceful hand-over (SIGTERM; uvicorn restarts the worker). Before
    each trial the server must again have 4 live workers and exactly one live primary. A baseline
    trial without a new primary within 15 s counts as "none" and its server is restarted."""
    tmp, file_project, redis_project = ctx["tmp"], ctx["file_project"], ctx["redis_project"]

    def ours() -> Server:
        env = project_env(file_project, LOCK_PATH=str(tmp / f"ours-{uuid.uuid4().hex[:6]}.lock"))
        return Server("ours-file", f"{PACKAGE}.api:app", env, file_project)

    def baseline() -> Server:
        env = base_env([ctx["apps"]], LOCK_PATH=str(tmp / f"base-{uuid.uuid4().hex[:6]}.lock"))
        return Server("baseline", "baseline_app:app", env, ctx["apps"])

    results: dict[str, list[float | None]] = {"file": [], "baseline": [], "redis_crash": [], "redis_handover": []}
    a, b = start_steady(ours), start_steady(baseline)
    try:
        for i in range(trials):
            results["file"].append(failover_trial(a, signal.SIGKILL))
            if b.steady(20) is None:  # the previous baseline trial left it without a primary
                b.stop()
                b = start_steady(baseline)
            results["baseline"].append(failover_trial(b, signal.SIGKILL))
            print(
                f"  failover trial {i + 1}/{trials}: file {fmt(results['file'][-1])} ms, "
                f"baseline {fmt(results['baseline'][-1])} ms",
                flush=True,
            )
    finally:
        a.stop()
        b.stop()

    env = project_env(
        redis_project, REDIS_URL=ctx["redis"].url, LOCK_KEY_PREFIX=f"fo-{uuid.uuid4().hex[:6]}", LOCK_TTL_SECONDS="3"
    )
    r = start_steady(lambda: Server("ours-redis", f"{PACKAGE}.api:app", env, redis_project))
    try:
        for i in range(trials):
            results["redis_crash"].append(failover_trial(r, signal.SIGKILL))
            print(f"  redis_crash trial {i + 1}/{trials}: {fmt(results['redis_crash'][-1])} ms", flush=True)
    finally:
        r.stop()
    results.pop("redis_handover")

    out = {name: failover_summary(values) for name, values in results.items()}
    base, ours_p50 = out["baseline"]["p50"], out["file"]["p50"]
    out["ratio_p50_file_over_baseline"] = (ours_p50 / base) if base and ours_p50 is not None else None
    return out


def failover_summary(values: list[float | None]) -> dict[str, Any]:
    done = [v for v in values if v is not None]
    return {**summary(done), "none": len(values) - len(done), "trials": len(values), "values_ms": values}


def measure_handover(ctx: dict[str, Any], trials: int) -> dict[str, Any]:
    """Redis graceful hand-over: SIGTERM to the primary worker (uvicorn restarts it), time to the
    successor's promotion line (LOCK_TTL_SECONDS=3). A primary that is still alive 10 s after its
    SIGTERM is counted as "stuck" and killed with SIGKILL so that the next trial can run; its trial
    is "none" (the successor then only comes after the lease expires)."""
    env = project_env(
        ctx["redis_project"],
        REDIS_URL=ctx["redis"].url,
        LOCK_KEY_PREFIX=f"ho-{uuid.uuid4().hex[:6]}",
        LOCK_TTL_SECONDS="3",
    )
    r = start_steady(lambda: Server("ours-redis-handover", f"{PACKAGE}.api:app", env, ctx["redis_project"]))
    values: list[float | None] = []
    stuck: list[dict[str, Any]] = []
    try:
        for i in range(trials):
            primary = r.steady(30)
            if primary is None:
                raise RuntimeError("handover: not steady before a trial")
            t0 = r.kill(primary, signal.SIGTERM)
            t = wait_until(lambda: r.promotion_after(t0, {primary}), 10.0, 0.002)
            values.append(None if t is None else (t - t0) * 1000)
            if not wait_until(lambda: not is_alive(primary), max(0.0, t0 + 10 - now()) + 0.01, 0.02):
                stuck.append({"trial": i + 1, "pid": primary})
                r.kill(primary)
            print(
                f"  redis_handover trial {i + 1}/{trials}: {fmt(values[-1])} ms"
                f"{' (primary stuck after SIGTERM, killed)' if stuck and stuck[-1]['trial'] == i + 1 else ''}",
                flush=True,
            )
    finally:
        r.stop()
    return {**failover_summary(values), "stuck_after_sigterm": stuck}


def reload_trial_pair(servers: list[Server], makers: list[Callable[[], Server]]) -> list[str]:
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

        if not wait_until(complete, 90, 0.05):
            outcomes.append("incomplete")
            continue
        got = wait_until(lambda: server.primaries() - old, 3.0, 0.02)
        outcomes.append("none" if not got else ("two" if len(server.primaries()) > 1 else "primary"))
    return outcomes


def measure_reloads(ctx: dict[str, Any], trials: int) -> dict[str, Any]:
    """HUP reloads of the uvicorn master (uvicorn starts each new worker, waits until it is ready,
    then stops the old one). Counted: reloads that end with NO primary. Ours (file backend) and the
    baseline run side by side and are HUPed at the same moment. Plain, and with a slow shutdown
    (SLOW_EXIT_SECONDS=2: ours via tests' apps:slow_exit_app --factory, the baseline sleeps in its
    lifespan shutdown while still holding its lock)."""
    tmp, project = ctx["tmp"], ctx["file_project"]
    results: dict[str, Any] = {}
    for variant, slow in (("plain", "0"), ("slow_exit", "2")):

        def ours() -> Server:
            env = project_env(project, LOCK_PATH=str(tmp / f"rl-{uuid.uuid4().hex[:6]}.lock"), SLOW_EXIT_SECONDS=slow)
            if slow == "0":
                return Server("ours-file", f"{PACKAGE}.api:app", env, project)
            return Server("ours-file", "apps:slow_exit_app", env, project, extra=("--factory",))

        def baseline() -> Server:
            env = base_env(
                [ctx["apps"]], LOCK_PATH=str(tmp / f"rlb-{uuid.uuid4().hex[:6]}.lock"), SLOW_EXIT_SECONDS=slow
            )
            return Server("baseline", "baseline_app:app", env, ctx["apps"])

        makers = [ours, baseline]
        servers = [start_steady(ours), start_steady(baseline)]
        counts = [Counter(), Counter()]
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


# -- 3: throughput ----------------------------------------------------------------------------------


async def load(port: int, seconds: float, concurrency: int = 32) -> tuple[int, int]:
    """``concurrency`` coroutines GET /health back to back for ``seconds``: (ok, errors)."""
    import httpx

    ok = errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10) as client:
        end = now() + seconds

        async def worker() -> None:
            nonlocal ok, errors
            while now() < end:
                try:
                    response = await client.get("/health")
                    ok += response.status_code == 200
                    errors += response.status_code != 200
                except httpx.HTTPError:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, errors


def measure_throughput(ctx: dict[str, Any], seconds: float, runs: int = 3) -> dict[str, Any]:
    """Requests/s on GET /health: the baked file-backend project (4 workers) vs a plain FastAPI app
    (4 workers, same route), both servers up, load runs interleaved (ours, plain, ours, ...), one
    asyncio httpx.AsyncClient with 32 concurrent requests in this process (same generator for both;
    it shares the 2 cores with the servers). 1 s of warm-up load before each server's first run."""
    tmp, project = ctx["tmp"], ctx["file_project"]
    ours = start_steady(
        lambda: Server("ours-file", f"{PACKAGE}.api:app", project_env(project, LOCK_PATH=str(tmp / "tp.lock")), project)
    )
    plain = Server("plain", "plain_app:app", base_env([ctx["apps"]]), ctx["apps"])
    rates: dict[str, list[float]] = {"ours_file": [], "plain": []}
    try:
        wait_until(lambda: _answers(plain.port), 30, 0.1)
        for server in (ours, plain):
            asyncio.run(load(server.port, 1.0))
        for i in range(runs):
            for name, server in (("ours_file", ours), ("plain", plain)):
                ok, errors = asyncio.run(load(server.port, seconds))
                rates[name].append(ok / seconds)
                print(f"  throughput run {i + 1}/{runs} {name}: {ok / seconds:.0f} req/s ({errors} errors)", flush=True)
    finally:
        ours.stop()
        plain.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "runs_req_per_s": rates,
        "median": med,
        "ratio_ours_over_plain": med["ours_file"] / med["plain"],
        "seconds": seconds,
        "concurrency": 32,
    }


def _answers(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- 4: start-up and standby cost ----------------------------------------------------------------


def measure_startup(ctx: dict[str, Any], trials: int = 5) -> dict[str, Any]:
    """Time from Popen of the uvicorn master to reading the first primary=True line; fresh lock
    (file) or fresh key prefix (redis, default ttl) each trial."""
    out: dict[str, Any] = {}
    for backend in ("file", "redis"):
        project = ctx[f"{backend}_project"]
        times = []
        for _ in range(trials):
            scope = (
                {"LOCK_PATH": str(ctx["tmp"] / f"st-{uuid.uuid4().hex[:6]}.lock")}
                if backend == "file"
                else {"REDIS_URL": ctx["redis"].url, "LOCK_KEY_PREFIX": f"st-{uuid.uuid4().hex[:6]}"}
            )
            server = Server(f"startup-{backend}", f"{PACKAGE}.api:app", project_env(project, **scope), project)
            try:
                t = wait_until(lambda: server.promotion_after(0, set()), 30, 0.005)
                times.append((t - server.started_at) * 1000 if t else None)
                server.steady(30)
            finally:
                server.stop()
        done = [t for t in times if t is not None]
        out[backend] = {**summary(done), "values_ms": times}
        print(f"  startup {backend}: {[fmt(t, 0) for t in times]} ms", flush=True)
    return out


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def measure_standby_cost(ctx: dict[str, Any], seconds: float = 10.0) -> dict[str, Any]:
    """Redis at rest, 4 workers: Redis commands/s per worker (INFO commandstats total calls over
    ``seconds``, minus our own INFO calls, / 4) and CPU % of each standby (utime+stime from
    /proc/<pid>/stat over the same window). With the default LOCK_TTL_SECONDS=10 and with 3."""
    project, redis_server = ctx["redis_project"], ctx["redis"]
    out: dict[str, Any] = {}
    for ttl in ("10", "3"):
        env = project_env(
            project, REDIS_URL=redis_server.url, LOCK_KEY_PREFIX=f"sb-{uuid.uuid4().hex[:6]}", LOCK_TTL_SECONDS=ttl
        )
        server = start_steady(lambda: Server("standby-cost", f"{PACKAGE}.api:app", env, project))
        try:
            time.sleep(2)
            primary = server.steady(10)
            standbys = sorted(server.live_workers() - {primary})
            client = redis_server.client()

            def calls() -> int:
                return sum(v["calls"] for v in client.info("commandstats").values())

            c0, ticks0, t0 = calls(), {p: cpu_ticks(p) for p in standbys}, now()
            time.sleep(seconds)
            c1, ticks1, t1 = calls(), {p: cpu_ticks(p) for p in standbys}, now()
            elapsed = t1 - t0
            total = (c1 - c0 - 1) / elapsed  # one INFO of ours is in the window
            cpu = [100 * (ticks1[p] - ticks0[p]) / CLK_TCK / elapsed for p in standbys]
            out[f"ttl_{ttl}"] = {
                "redis_cmds_per_s_total": total,
                "redis_cmds_per_s_per_worker": total / 4,
                "standby_cpu_percent": cpu,
                "window_s": elapsed,
            }
            print(
                f"  standby cost ttl={ttl}: {total / 4:.2f} cmd/s/worker, standby CPU {[round(c, 2) for c in cpu]} %",
                flush=True,
            )
            client.close()
        finally:
            server.stop()
    return out


# -- 5: alert burst -------------------------------------------------------------------------------


async def probe(port: int, seconds: float, burst_at: float | None, concurrency: int = 4) -> dict[str, Any]:
    """``concurrency`` sequential /health probers for ``seconds``; optionally fire 100 concurrent
    GET /errors?count=10 (1,000 ERROR records) ``burst_at`` seconds in."""
    import httpx

    latencies: list[float] = []
    burst: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=200)
    ) as client:
        end = now() + seconds

        async def prober() -> None:
            while now() < end:
                t = now()
                await client.get("/health")
                latencies.append((now() - t) * 1000)

        async def fire() -> None:
            await asyncio.sleep(burst_at or 0)
            t = now()
            responses = await asyncio.gather(
                *(client.get("/errors", params={"count": 10}) for _ in range(100)), return_exceptions=True
            )
            burst["seconds"] = now() - t
            burst["ok"] = sum(1 for r in responses if not isinstance(r, Exception) and r.status_code == 200)

        tasks = [prober() for _ in range(concurrency)] + ([fire()] if burst_at is not None else [])
        await asyncio.gather(*tasks)
    return {"latencies": latencies, "burst": burst}


def measure_alert_burst(ctx: dict[str, Any], rounds: int = 2, seconds: float = 6.0) -> dict[str, Any]:
    """p50/p99 of GET /health latency (4 sequential probers, 6 s windows) on the tests'
    ``apps:noisy_app`` (4 workers, ALERT_RECIPIENTS set, EMAIL_BACKEND=smtp to an aiosmtpd sink,
    ALERT_DIGEST_SECONDS=2), without and with a burst of 1,000 ERROR records (100 concurrent
    /errors?count=10, 0.5 s into the window; the window covers the next digest sends). Rounds
    alternate quiet/burst."""
    tmp, project = ctx["tmp"], ctx["file_project"]
    sink = MailSink()
    env = project_env(
        project,
        LOCK_PATH=str(tmp / "alert.lock"),
        ALERT_RECIPIENTS="ops@example.com",
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(sink.port),
        ALERT_DIGEST_SECONDS="2",
    )
    server = start_steady(lambda: Server("noisy", "apps:noisy_app", env, project, extra=("--factory",)))
    quiet: list[float] = []
    noisy: list[float] = []
    bursts = []
    try:
        asyncio.run(load(server.port, 1.0))
        for i in range(rounds):
            quiet += asyncio.run(probe(server.port, seconds, None))["latencies"]
            time.sleep(3)
            result = asyncio.run(probe(server.port, seconds, 0.5))
            noisy += result["latencies"]
            bursts.append(result["burst"])
            time.sleep(3)  # let the last digests go out
            print(f"  alert burst round {i + 1}: burst {result['burst']}", flush=True)
        time.sleep(2)
        mails = len(sink.ids())
        alive = len(server.live_workers())
    finally:
        server.stop()
        sink.stop()
    return {
        "quiet_ms": summary(quiet),
        "burst_ms": summary(noisy),
        "bursts": bursts,
        "digest_mails_received": mails,
        "live_workers_after": alive,
    }


# -- soak -------------------------------------------------------------------------------------------


def soak(ctx: dict[str, Any], backend: str, minutes: float, seed: int, persist: bool = False) -> dict[str, Any]:
    """Faults every 3-6 s (seeded) for ``minutes`` against reports every 2 s.

    file: one server of 4 workers; redis: two servers of 4 workers sharing one Redis,
    LOCK_TTL_SECONDS=3. Faults: kill -9 of a random worker or of the primary, HUP reload of a
    master; redis also: Redis restart (kill -9 + start on the same port; empty unless
    ``persist``, which runs Redis with appendonly yes as the generated docker-compose.yml does) and
    SIGSTOP of the primary for 5 s, then SIGCONT. Primary intervals come from the role lines (read
    times): an interval ends at the demotion line, at the kill time of a killed worker, at the first
    time the script saw the pid dead, or for a paused primary at pause + (ttl - safety margin) =
    pause + 2 s, by when the design guarantees that it has stopped singleton work."""
    tmp, project = ctx["tmp"], ctx[f"{backend}_project"]
    sink = MailSink()
    env = dict(
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(sink.port),
        REPORT_SCHEDULE="*/2 * * * * *",
        REPORT_RECIPIENTS="ops@example.com",
    )
    redis_server = None
    if backend == "file":
        env["LOCK_PATH"] = str(tmp / f"soak-{uuid.uuid4().hex[:6]}" / "primary.lock")
        count = 1
    else:
        redis_server = Redis(tmp / f"redis-soak-{uuid.uuid4().hex[:6]}", persist)
        env.update(REDIS_URL=redis_server.url, LOCK_KEY_PREFIX="soak", LOCK_TTL_SECONDS="3")
        count = 2
    servers = [
        Server(f"{backend}-{i}", f"{PACKAGE}.api:app", project_env(project, **env), project) for i in range(count)
    ]
    rng = random.Random(seed)
    faults: list[dict[str, Any]] = []
    pause_caps: dict[int, list[float]] = {}  # pid -> pause time + 2 s, for every pause
    death_seen: dict[int, float] = {}

    def all_primaries() -> set[int]:
        return set().union(*(s.primaries() for s in servers))

    def owner(pid: int) -> Server:
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

    kinds = ["kill_random", "kill_primary", "hup"] + (["redis_restart", "sigstop_primary"] if redis_server else [])
    try:

        def started() -> bool:
            return len(all_primaries()) == 1 and all(len(s.live_workers()) >= s.workers for s in servers)

        if not wait_until(started, 40):
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
            elif kind == "redis_restart":
                assert redis_server is not None
                redis_server.kill()
                redis_server.start()
                fault["restart_s"] = now() - start - fault["t"]
            elif kind == "sigstop_primary":
                pid = rng.choice(sorted(primaries))
                t = owner(pid).kill(pid, signal.SIGSTOP)
                pause_caps.setdefault(pid, []).append(t + 2.0)  # ttl 3 - safety margin 1
                fault["pid"] = pid
                watch(5)
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:  # uvicorn's master kills a worker that misses its health check
                    fault["note"] = "gone before SIGCONT (killed by the uvicorn master's health check)"
            faults.append(fault)
            print(f"  soak {backend} t={fault['t']:.1f}s {fault}", flush=True)
        watch(8)  # quiet tail: last reloads complete, catch-up reports go out
        stop_at = now()
    finally:
        for s in servers:
            s.stop()
        if redis_server:
            redis_server.stop()
        time.sleep(0.5)
        sink.stop()
    result = analyse_soak(backend, servers, sink, faults, pause_caps, death_seen, start, stop_at, minutes, seed)
    result["redis_appendonly"] = persist if backend == "redis" else None
    return result


def analyse_soak(
    backend: str,
    servers: list[Server],
    sink: MailSink,
    faults: list[dict[str, Any]],
    pause_caps: dict[int, list[float]],
    death_seen: dict[int, float],
    start: float,
    stop_at: float,
    minutes: float,
    seed: int,
) -> dict[str, Any]:
    """Turn the recorded lines into primary intervals, overlaps, time without a primary, and the
    report counts (expected every 2 s from the first to the last period received)."""
    events = sorted((t, pid, p, s.name) for s in servers for t, pid, p in s.events)
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
    level, last, none_time, overlap_time, overlaps = 0, None, 0.0, 0.0, []
    gaps = []
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
    ids = sink.ids()
    counts = Counter(mid for mid in ids if mid.startswith("<report."))
    from datetime import datetime, timedelta

    periods = sorted({datetime.strptime(REPORT_ID.search(mid)[1], "%Y%m%dT%H%M%SZ") for mid in counts})
    missed: list[str] = []
    expected = 0
    if periods:
        p = periods[0]
        have = set(periods)
        while p <= periods[-1]:
            expected += 1
            if p not in have:
                missed.append(p.strftime("%H:%M:%S"))
            p += timedelta(seconds=2)
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    return {
        "backend": backend,
        "minutes": minutes,
        "seed": seed,
        "servers": len(servers),
        "faults": faults,
        "fault_counts": dict(Counter(f["kind"] for f in faults)),
        "role_changes": [
            {"t": t - start, "pid": pid, "primary": p, "server": name, "epoch": epoch_of(pid, t) if p else None}
            for t, pid, p, name in events
        ],
        "intervals": [{**iv, "start": iv["start"] - start, "end": iv["end"] - start} for iv in intervals],
        "periods_expected": expected,
        "reports_delivered": sum(counts.values()),
        "distinct_periods": len(periods),
        "duplicates": duplicates,
        "missed": missed,
        "time_without_primary_s": none_time,
        "longest_gap_s": max(gaps, default=0.0),
        "overlap_s": overlap_time,
        "overlaps": overlaps,
        "note": "interval end of a SIGSTOPped primary = pause + 2 s (ttl 3 - safety margin 1), the "
        "design's guarantee; a killed worker's interval ends at its kill time; times are when "
        "this script read the lines (two servers = two pipes, so ms-scale overlaps across "
        "servers can be reading jitter).",
    }


# -- main -------------------------------------------------------------------------------------------


def print_default(res: dict[str, Any]) -> list[str]:
    out = []
    if "failover" in res:
        f = res["failover"]
        rows = [
            [name, f[name]["trials"], f[name]["none"], f[name]["p50"], f[name]["p95"], f[name]["max"]]
            for name in ("file", "baseline", "redis_crash")
        ]
        if "handover" in res:
            h = res["handover"]
            rows.append(["redis_handover", h["trials"], h["none"], h["p50"], h["p95"], h["max"]])
        out.append(
            table(
                "Failover latency (ms, kill -> successor's promotion line read)",
                ["scenario", "trials", "none", "p50", "p95", "max"],
                rows,
            )
        )
        print(f"ratio p50 ours(file)/baseline: {fmt(f['ratio_p50_file_over_baseline'], 4)}")
        if "handover" in res:
            print(
                f"hand-over: primary still alive 10 s after SIGTERM (stuck) in {len(res['handover']['stuck_after_sigterm'])} trials: {res['handover']['stuck_after_sigterm']}"
            )
    if "reloads" in res:
        rows = []
        for variant, r in res["reloads"].items():
            for who in ("ours_file", "baseline"):
                c = r[who]
                rows.append(
                    [
                        variant,
                        who,
                        r["trials"],
                        c.get("primary", 0),
                        c.get("none", 0),
                        c.get("two", 0),
                        c.get("incomplete", 0),
                    ]
                )
        out.append(
            table(
                "HUP reloads: outcome once complete (+3 s)",
                ["variant", "server", "trials", "primary", "NO primary", "two", "incomplete"],
                rows,
            )
        )
    if "throughput" in res:
        t = res["throughput"]
        rows = [
            [k, ", ".join(f"{v:.0f}" for v in t["runs_req_per_s"][k]), t["median"][k]] for k in ("ours_file", "plain")
        ]
        out.append(table("Throughput GET /health (req/s, 32 concurrent, 4 workers)", ["app", "runs", "median"], rows))
        print(f"ratio ours/plain: {t['ratio_ours_over_plain']:.3f}")
    if "startup" in res:
        s = res["startup"]
        out.append(
            table(
                "Start to first primary (ms)",
                ["backend", "n", "p50", "max"],
                [[b, s[b]["n"], s[b]["p50"], s[b]["max"]] for b in ("file", "redis")],
            )
        )
    if "standby_cost" in res:
        rows = [
            [
                k,
                v["redis_cmds_per_s_total"],
                v["redis_cmds_per_s_per_worker"],
                ", ".join(f"{c:.2f}" for c in v["standby_cpu_percent"]),
            ]
            for k, v in res["standby_cost"].items()
        ]
        out.append(
            table(
                "Redis at rest (4 workers, 10 s)", ["setting", "cmd/s total", "cmd/s per worker", "standby CPU %"], rows
            )
        )
    if "alert_burst" in res:
        a = res["alert_burst"]
        rows = [
            [k, a[f"{k}_ms"]["n"], a[f"{k}_ms"]["p50"], a[f"{k}_ms"]["p99"], a[f"{k}_ms"]["max"]]
            for k in ("quiet", "burst")
        ]
        out.append(
            table(
                "GET /health latency (ms) without / with a 1,000-error burst",
                ["window", "requests", "p50", "p99", "max"],
                rows,
            )
        )
        print(f"digest mails received: {a['digest_mails_received']}, bursts: {a['bursts']}")
    return out


def print_soak(results: list[dict[str, Any]]) -> None:
    rows = [
        [
            r["backend"] + (" (appendonly)" if r.get("redis_appendonly") else ""),
            f"{r['minutes']:g} min",
            sum(r["fault_counts"].values()),
            r["periods_expected"],
            r["reports_delivered"],
            len(r["duplicates"]),
            len(r["missed"]),
            r["time_without_primary_s"],
            r["longest_gap_s"],
            r["overlap_s"],
        ]
        for r in results
    ]
    table(
        "Soak (targets: 0 duplicates, 0 missed, 0 overlap)",
        [
            "backend",
            "length",
            "faults",
            "periods expected",
            "reports delivered",
            "duplicates",
            "missed",
            "no primary (s)",
            "longest gap (s)",
            "overlap (s)",
        ],
        rows,
    )
    for r in results:
        print(
            f"{r['backend']}: faults {r['fault_counts']}; missed {r['missed']}; duplicates {r['duplicates']}; overlaps {r['overlaps']}"
        )
    print("Note: " + results[0]["note"] if results else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--reload-trials", type=int, default=10)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument(
        "--only",
        default="failover,handover,reloads,throughput,startup,standby_cost,alert_burst",
        help="comma-separated subset of the default-mode measurements",
    )
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--backend", choices=["file", "redis", "both"], default="both")
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
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not on PATH")
    out = args.out or ROOT / "bench" / "results" / ("soak.json" if args.soak else "latest.json")
    global LOG_DIR
    LOG_DIR = out.parent / "logs" / out.stem
    started = now()
    with tempfile.TemporaryDirectory(prefix="bench-") as name:
        tmp = Path(name)
        ctx: dict[str, Any] = {"tmp": tmp, "apps": write_apps(tmp)}
        for backend in ("file", "redis"):
            ctx[f"{backend}_project"] = bake(backend, tmp)
        results: dict[str, Any] = {"argv": sys.argv, "python": sys.version.split()[0], "nproc": os.cpu_count()}
        if args.soak:
            backends = ["file", "redis"] if args.backend == "both" else [args.backend]
            results["soak"] = [soak(ctx, b, args.minutes, args.seed, args.redis_persist) for b in backends]
        else:
            ctx["redis"] = Redis(tmp / "redis")
            try:
                steps = {
                    "failover": lambda: measure_failover(ctx, args.trials),
                    "handover": lambda: measure_handover(ctx, args.trials),
                    "reloads": lambda: measure_reloads(ctx, args.reload_trials),
                    "throughput": lambda: measure_throughput(ctx, args.load_seconds),
                    "startup": lambda: measure_startup(ctx),
                    "standby_cost": lambda: measure_standby_cost(ctx),
                    "alert_burst": lambda: measure_alert_burst(ctx),
                }
                for step in args.only.split(","):
                    print(f"== {step}", flush=True)
                    t = now()
                    results[step] = steps[step]()
                    print(f"   ({now() - t:.0f} s)", flush=True)
            finally:
                ctx["redis"].stop()
        results["wall_seconds"] = now() - started
    if args.soak:
        print_soak(results["soak"])
    else:
        print_default(results)
    print(f"\nwall time {results['wall_seconds']:.0f} s; results in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
