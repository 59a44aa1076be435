"""Metrics and JSON logs, as a monitoring system sees them from real multi-worker servers."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Server
from support import wait_until

STATUS_LINE = re.compile(r'^primary_worker_status\{pid="(\d+)"\} ([0-9.]+)$', re.MULTILINE)


def primary_status(server: Server) -> dict[int, float]:
    """``primary_worker_status`` by pid, from one scrape (answered by whichever worker)."""
    body = server.get("/metrics").text
    return {int(pid): float(value) for pid, value in STATUS_LINE.findall(body)}


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_primary_worker_status_sums_to_one_before_and_after_a_kill(
    start_server: Callable[..., Server], kind: str
) -> None:
    server = start_server(kind, workers=4)
    workers = server.wait_until_started()
    primary = server.wait_for_primary()

    # Every scrape, whichever worker answers it, sees all four workers and one primary.
    for _ in range(8):
        status = primary_status(server)
        assert set(status) == workers and status[primary] == 1 and sum(status.values()) == 1

    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)
    successor = server.wait_for_primary()

    def settled() -> dict[int, float] | None:
        status = primary_status(server)
        return status if status.get(successor) == 1 and len(status) == 4 else None

    status = wait_until(settled, "a scrape that shows the successor and the replacement worker")
    assert primary not in status and sum(status.values()) == 1  # the killed worker's gauge is gone
    body = server.get("/metrics").text
    transitions = re.search(r"^primary_worker_transitions_total ([0-9.]+)$", body, re.MULTILINE)
    assert transitions and float(transitions[1]) >= 2  # the first primary's, and its successor's
    assert re.search(r"^primary_lock_errors_total 0\.0$", body, re.MULTILINE)
    server.assert_never_two_primaries()


def test_json_logs_are_one_object_per_line_with_role_and_epoch(start_server: Callable[..., Server]) -> None:
    server = start_server("launcher", workers=2, env={"LOG_FORMAT": "json"})
    server.wait_until_started()
    primary = server.wait_for_primary()
    server.get("/health")
    server.stop()

    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert records, server.output()
    assert all({"time", "level", "logger", "message", "pid", "role", "epoch"} <= set(r) for r in records)
    # uvicorn's own lines, its supervisor's included, are JSON too: no line of the run is plain text.
    assert [line for line in server.output().splitlines() if line.strip() and not line.startswith("{")] == []
    assert any(r["message"].startswith("Started parent process") for r in records)  # the supervisor's
    assert any(r["message"].startswith("Started server process") for r in records)  # a worker's
    promoted = [r for r in records if f"pid={primary}, primary=True" in r["message"]]
    assert promoted and promoted[0]["pid"] == primary
    later = [r for r in records if r["pid"] == primary and r["role"] == "primary"]
    assert later and all(isinstance(r["epoch"], int) and r["epoch"] >= 1 for r in later)


def test_metrics_that_cannot_be_written_never_stop_the_election(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server("uvicorn", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")})
    server.wait_for_primary()
    assert server.get("/metrics").status_code == 503
    assert server.get("/health/worker").json()["lock_error"] is None
    server.wait_for_log(r"ERROR .*Metrics cannot be written; this worker goes on without them")


def test_job_runs_are_counted_for_every_worker_to_see(start_server: Callable[..., Server]) -> None:
    every_second = {"REPORT_RECIPIENTS": "ops@example.com", "REPORT_SCHEDULE": "* * * * * *"}
    server = start_server("uvicorn", workers=2, env={**every_second, "EMAIL_BACKEND": "console"})
    server.wait_for_primary()
    done = re.compile(r'^singleton_job_runs_total\{job="report",outcome="done"\} ([0-9.]+)$', re.MULTILINE)

    def counted() -> float | None:
        found = done.search(server.get("/metrics").text)  # whichever worker answers
        return float(found[1]) if found and float(found[1]) >= 2 else None

    assert wait_until(counted, "two report runs counted in /metrics") >= 2
