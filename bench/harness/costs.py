"""Start-up, the cost of a standby, GET /health under httpx load, and /health during an alert burst."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from mail_sink import MailSink

from .backends import Backend, PostgresBackend, RedisBackend
from .project import base_env
from .servers import BenchServer, now, start_steady, within
from .stats import fmt, summary

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- throughput (httpx; bench/throughput.py measures with wrk) ------------------------------------


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


def _answers(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def measure_throughput(ctx: dict[str, Any], file_backend: Backend, seconds: float, runs: int = 3) -> dict[str, Any]:
    """Requests/s on GET /health: the baked file-backend project (4 workers) vs a plain FastAPI app
    (4 workers, same route), both servers up, load runs interleaved (ours, plain, ours, ...), one
    asyncio httpx.AsyncClient with 32 concurrent requests in this process (same generator for both;
    it shares the 2 cores with the servers: capped at a few hundred req/s, see bench/throughput.py
    for wrk). 1 s of warm-up load before each server's first run."""
    ours = start_steady(lambda: file_backend.server("throughput"))
    plain = BenchServer("plain", "plain_app:app", base_env([ctx["apps"]]))
    rates: dict[str, list[float]] = {"ours_file": [], "plain": []}
    try:
        within(lambda: _answers(plain.port), 30)
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


# -- start-up and standby cost --------------------------------------------------------------------


def measure_startup(backends: list[Backend], trials: int = 5) -> dict[str, Any]:
    """Time from Popen of the uvicorn master to reading the first primary=True line, each trial on a
    lock scope never used before (default ttl): a lease backend's first holder of a new scope waits
    out any lease it cannot know of (ttl - margin = 8 s) before it promotes."""
    out: dict[str, Any] = {}
    for backend in backends:
        times = []
        for _ in range(trials):
            server = backend.server("startup")
            try:
                t = within(lambda: server.promotion_after(0, set()), 30)
                times.append((t - server.started_at) * 1000 if t else None)
                server.steady(30)
            finally:
                server.stop()
        done = [t for t in times if t is not None]
        out[backend.name] = {**summary(done), "values_ms": times}
        print(f"  startup {backend.name}: {[fmt(t, 0) for t in times]} ms", flush=True)
    return out


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def measure_standby_cost(backends: list[Backend], seconds: float = 20.0) -> dict[str, Any]:
    """A lease backend at rest, 4 workers: its server's requests/s (Redis: INFO commandstats calls,
    minus our own INFO; PostgreSQL: pg_stat_database xact_commit, minus our own reads, flushed by the
    sessions at least every 10 s, hence the 20 s window) and the CPU % of each standby
    (utime+stime from /proc/<pid>/stat over the same window); default LOCK_TTL_SECONDS=10 and 3."""
    out: dict[str, Any] = {}
    for backend in backends:
        if isinstance(backend, RedisBackend):
            client = backend.client()

            def calls() -> int:
                return sum(v["calls"] for v in client.info("commandstats").values())

            own = 1  # one INFO of ours is in the window
        elif isinstance(backend, PostgresBackend):
            calls, own = backend.queries, 2  # our SELECT and pg_stat_clear_snapshot() each commit
        else:
            continue
        for ttl in ("10", "3"):
            server = start_steady(lambda: backend.server("standby", ttl))
            try:
                time.sleep(12)  # past the first holder's wait and the stats flush of the start
                primary = server.steady(10)
                standbys = sorted(server.live_workers() - {primary})
                c0, ticks0, t0 = calls(), {p: cpu_ticks(p) for p in standbys}, now()
                time.sleep(seconds)
                c1, ticks1, t1 = calls(), {p: cpu_ticks(p) for p in standbys}, now()
                elapsed = t1 - t0
                total = (c1 - c0 - own) / elapsed
                cpu = [100 * (ticks1[p] - ticks0[p]) / CLK_TCK / elapsed for p in standbys]
                out[f"{backend.name}_ttl_{ttl}"] = {
                    "requests_per_s_total": total,
                    "requests_per_s_per_worker": total / 4,
                    "standby_cpu_percent": cpu,
                    "window_s": elapsed,
                }
                print(
                    f"  standby cost {backend.name} ttl={ttl}: {total / 4:.2f} req/s/worker, "
                    f"standby CPU {[round(c, 2) for c in cpu]} %",
                    flush=True,
                )
            finally:
                server.stop()
    return out


# -- alert burst --------------------------------------------------------------------------------


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


def measure_alert_burst(file_backend: Backend, rounds: int = 2, seconds: float = 6.0) -> dict[str, Any]:
    """p50/p99 of GET /health latency (4 sequential probers, 6 s windows) on the tests'
    ``apps:noisy_app`` (4 workers, ALERT_RECIPIENTS set, EMAIL_BACKEND=smtp to the tests' MailSink,
    ALERT_DIGEST_SECONDS=2), without and with a burst of 1,000 ERROR records (100 concurrent
    /errors?count=10, 0.5 s into the window; the window covers the next digest sends). Rounds
    alternate quiet/burst."""
    sink = MailSink()
    sink.start(may_move=True)
    env = file_backend.env(
        "alert",
        ALERT_RECIPIENTS="ops@example.com",
        EMAIL_BACKEND="smtp",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(sink.port),
        ALERT_DIGEST_SECONDS="2",
    )
    server = start_steady(lambda: BenchServer("noisy", "apps:noisy_app", env, extra=("--factory",)))
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
        mails = len(sink.received())
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
