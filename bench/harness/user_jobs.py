"""A user's job and a slow start-up task in the soak's project, and a readiness poller.

The soak's project gets, in the baked copy's ``src/<package>/jobs.py`` (the template is not changed),
what a user would declare there: ``bench_tick``, a ``@scheduled`` job every second (6-field cron)
that appends one record per run (run.key, period, pid, epoch, times), and ``bench_slow_migration``,
a ``@startup_task`` that takes ``BENCH_STARTUP_SECONDS`` (2.5 s) and records its start and finish.
Each record is one ``write()`` to a file opened with ``O_APPEND``: lines of several processes never
mix. Both are declared only when ``BENCH_RECORDS_DIR`` is set.

While the soak runs, ``ReadinessPoller`` asks ``GET /health/ready`` on every server every 20 ms
(a new connection each time, so that the kernel hands it to any worker) and keeps every answer
with the pid of the worker that gave it. ``analyse_user_job`` then counts the job's runs, duplicate
periods, periods missed inside the catch-up window, and whether any worker answered 200 before the
start-up task had first finished (targets: 0, 0, never).

Times: the records carry the worker's ``time.monotonic()``, the poller its own; on Linux
CLOCK_MONOTONIC is one clock for every process of the machine, so they compare directly.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .project import PACKAGE

STARTUP_SECONDS = "2.5"
CATCH_UP_SECONDS = 3600.0  # the job's catch-up window: the decorator's default
POLL_INTERVAL = 0.02

ANCHOR = "from .coordination import Run, StartupRun, scheduled, startup_task\n"
USER_JOBS = '''

# -- added by the bench (bench/harness/user_jobs.py) to the baked copy: a user's job and a slow
# start-up task, recorded to files in BENCH_RECORDS_DIR ------------------------------------------
import asyncio as _asyncio  # noqa: E402
import json as _json  # noqa: E402
import time as _time  # noqa: E402

_RECORDS = os.environ.get("BENCH_RECORDS_DIR")


def _record(name: str, **fields: object) -> None:
    """One line, one write() to a file opened with O_APPEND: lines of several workers never mix."""
    stamp = {"pid": os.getpid(), "wall": _time.time(), "mono": _time.monotonic()}
    line = _json.dumps({**fields, **stamp}) + "\\n"
    fd = os.open(os.path.join(_RECORDS or ".", name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


if _RECORDS:

    @startup_task()
    async def bench_slow_migration(run: StartupRun) -> None:
        _record("startup.jsonl", event="start", key=run.key, epoch=run.election.lock.epoch)
        await _asyncio.sleep(float(os.environ.get("BENCH_STARTUP_SECONDS", "2.5")))
        _record("startup.jsonl", event="finish", key=run.key, epoch=run.election.lock.epoch)

    @scheduled("* * * * * *")
    async def bench_tick(run: Run) -> None:
        _record("ticks.jsonl", key=run.key, period=run.period.timestamp(), epoch=run.election.lock.epoch)
'''


def add_user_jobs(project: Path) -> None:
    """Append the bench's job and start-up task to the baked project's ``jobs.py``."""
    jobs = project / "src" / PACKAGE / "jobs.py"
    text = jobs.read_text()
    if ANCHOR not in text or "\nimport os\n" not in text:
        raise RuntimeError(f"{jobs} no longer imports what the bench's jobs use: update USER_JOBS")
    jobs.write_text(text + USER_JOBS)


def records_env(directory: Path) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    return {"BENCH_RECORDS_DIR": str(directory), "BENCH_STARTUP_SECONDS": STARTUP_SECONDS}


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ReadinessPoller:
    """``GET /health/ready`` on each port every 20 ms, one thread per port; every answer kept as
    (sent, received, port, status, pid) with monotonic times."""

    def __init__(self, ports: list[int]) -> None:
        self.answers: list[tuple[float, float, int, int, int | None]] = []
        self.not_ready: list[tuple[float, int, str]] = []  # (received, port, body) of every answer but 200
        self.failures = 0  # refused, reset, timed out: a worker or server that is not there
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._poll, args=(port,), daemon=True) for port in ports]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _poll(self, port: int) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    connection.request("GET", "/health/ready")
                    response = connection.getresponse()
                    body = response.read()
                finally:
                    connection.close()
                received = time.monotonic()
                pid = None
                with contextlib.suppress(ValueError, AttributeError):
                    pid = json.loads(body).get("pid")
                with self._lock:
                    self.answers.append((sent, received, port, response.status, pid))
                    if response.status != 200:
                        self.not_ready.append((received, port, body[:300].decode(errors="replace")))
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.failures += 1
            self._stop.wait(POLL_INTERVAL)


def analyse_user_job(records: Path, poller: ReadinessPoller, start: float, stop_wall: float) -> dict[str, Any]:
    """The job's runs, duplicate and missed periods; the start-up task's runs; readiness vs its finish."""
    ticks = read_records(records / "ticks.jsonl")
    counts = Counter(tick["key"] for tick in ticks)
    duplicates = {key: [(t["pid"], t["epoch"]) for t in ticks if t["key"] == key] for key, n in counts.items() if n > 1}
    periods = sorted({tick["period"] for tick in ticks})
    missed: list[float] = []
    if periods:
        # Every second from the first period run to one second before the soak stopped (the quiet
        # tail gives the last ones 8 s): all of them lie inside the catch-up window (3600 s).
        last_due = math.floor(stop_wall) - 1
        seen = set(periods)
        missed = [p for p in range(int(periods[0]), last_due + 1) if p not in seen]
    lateness = [tick["wall"] - tick["period"] for tick in ticks]
    steps = read_records(records / "startup.jsonl")
    finishes = sorted(s["mono"] for s in steps if s["event"] == "finish")
    first_finish = finishes[0] if finishes else math.inf
    answers = sorted(poller.answers)
    early = [a for a in answers if a[3] == 200 and a[1] < first_finish]
    first_ready: dict[int, float] = {}
    for _, received, _, status, pid in answers:
        if status == 200 and pid is not None and pid not in first_ready:
            first_ready[pid] = received
    # A worker that answered 200 and later something else (it forgot, or the ledger was lost):
    flaps = [a for a in answers if a[3] != 200 and a[4] in first_ready and a[1] > first_ready[a[4]]]
    not_ready_later = Counter(a[4] for a in answers if a[3] != 200 and a[0] > first_finish)
    bodies = {received: body for received, _, body in poller.not_ready}
    ready_after_ms = sorted((t - first_finish) * 1000 for t in first_ready.values())
    # The workers that were there before the finish: how long until the last of them said 200.
    waiting = {a[4] for a in answers if a[1] < first_finish and a[4] in first_ready}
    all_ready_ms = max(((first_ready[pid] - first_finish) * 1000 for pid in waiting), default=None)
    return {
        "job_runs": len(ticks),
        "job_periods_expected": len(periods) + len(missed),
        "job_distinct_periods": len(periods),
        "job_duplicate_periods": duplicates,
        "job_missed_periods": [time.strftime("%H:%M:%S", time.gmtime(p)) for p in missed],
        "job_catch_up_seconds": CATCH_UP_SECONDS,
        "job_runs_late_over_2s": sum(1 for late in lateness if late > 2),
        "job_max_lateness_s": max(lateness, default=None),
        "startup_seconds": float(STARTUP_SECONDS),
        "startup_records": [{**s, "t": s["mono"] - start} for s in steps],
        "startup_starts": sum(1 for s in steps if s["event"] == "start"),
        "startup_finishes": len(finishes),
        "ready_polls": len(answers),
        "ready_poll_failures": poller.failures,
        "ready_200_before_finish": len(early),
        "ready_503_before_finish": sum(1 for a in answers if a[3] != 200 and a[1] < first_finish),
        "ready_first_200_ms_after_finish": {str(pid): (t - first_finish) * 1000 for pid, t in first_ready.items()},
        "ready_first_200_after_finish_min_ms": ready_after_ms[0] if ready_after_ms else None,
        "ready_all_waiting_workers_200_after_finish_ms": all_ready_ms,
        "ready_workers_seen": len({a[4] for a in answers if a[4] is not None}),
        "ready_workers_seen_200": len(first_ready),
        "ready_not_200_sent_after_finish": {str(pid): n for pid, n in not_ready_later.items()},
        "ready_not_200_sent_after_finish_detail": [
            {"sent": a[0] - start, "received": a[1] - start, "status": a[3], "pid": a[4], "body": bodies.get(a[1])}
            for a in answers
            if a[3] != 200 and a[0] > first_finish
        ][:40],
        "ready_again_not_200": len(flaps),
        "ready_again_not_200_detail": [
            {"received": a[1] - start, "status": a[3], "pid": a[4], "body": bodies.get(a[1])} for a in flaps
        ][:40],
        "first_finish_t": first_finish - start if finishes else None,
    }
