"""Singleton jobs on real multi-worker servers: a ``@scheduled`` job exactly once per period, a
``@startup_task`` once per release, and ``/health/ready`` on every worker (``apps.jobs_app``)."""

from __future__ import annotations

import inspect
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }} import jobs
from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import (
    Run,
    Schedule,
    declared_jobs,
    scheduled,
    startup_task,
)
from {{ cookiecutter.package_name }}.coordination import jobs as jobs_module
from {{ cookiecutter.package_name }}.coordination.jobs import StartupTask

from conftest import Server
from support import (
    assert_one_primary_at_a_time,
    both_instances,
    is_alive,
    merged_events,
    owner_of,
    single_primary,
    wait_until,
    wait_until_every_worker_is_ready,
)

JOBS_APP = {"app": "apps:jobs_app", "extra": ("--factory",)}
Note = tuple[str, str, int, float]
"""(start or end, run key, pid, unix time) as ``apps.note`` writes it."""


def test_the_decorators_leave_plain_functions_and_refuse_mistakes_at_import() -> None:
    startup_tasks = declared_jobs(Settings()).startup  # the example task of this backend
    assert startup_tasks and all(inspect.iscoroutinefunction(task.function) for task in startup_tasks)
    assert inspect.iscoroutinefunction(jobs.report)

    async def report(run: Run) -> None: ...

    with pytest.raises(ValueError, match="two jobs are named 'report'"):
        scheduled("* * * * *")(report)
    with pytest.raises(ValueError, match="schedule '61 \\* \\* \\* \\*' is not a valid schedule"):
        scheduled("61 * * * *", name="typo")(report)
    with pytest.raises(ValueError, match="catch_up='some'"):
        scheduled("* * * * *", name="typo", catch_up="some")(report)  # type: ignore[arg-type]


def plain(run: Any) -> None:
    """A plain ``def``: it would run inside the event loop."""


async def task(run: Any) -> None:
    """A start-up task to declare."""


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: scheduled("* * * * *", name="x")(plain), "must be an async function"),  # type: ignore[type-var]
        (lambda: startup_task(name="x")(plain), "must be an async function"),  # type: ignore[type-var]
        (lambda: Schedule("* * * * *", timezone="Europe/Viena"), "no known time zone"),
        (lambda: Schedule("* * * * *", timezone="localtime"), "name an IANA time zone"),
        (lambda: Schedule("* * * * *", timezone=None), "name an IANA time zone"),  # type: ignore[arg-type]
        (lambda: Schedule("0 0 30 2 *"), "never fires"),
        (lambda: Schedule("* * * * *", timeout=float("nan")), "timeout=nan"),
        (lambda: Schedule("* * * * *", catch_up_seconds="10"), "catch_up_seconds='10'"),  # type: ignore[arg-type]
        (lambda: StartupTask("x", task, "1", timeout=-1), "timeout=-1"),
        (lambda: StartupTask("x", task, "1", timeout=0), "timeout=0"),
        (lambda: StartupTask("x", task, "1", timeout=float("nan")), "timeout=nan"),
        (lambda: startup_task(name="x", version="")(task), "is empty"),
    ],
)
def test_mistakes_in_a_declaration_are_refused_with_a_message(
    declare: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        declare()


def test_version_0_is_a_version_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "_startup", {})
    startup_task(name="x", version=0)(task)  # type: ignore[arg-type]
    assert jobs_module._startup["x"].version == "0"


def notes(path: Path) -> list[Note]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        event, key, pid, at = line.split()
        found.append((event, key, int(pid), float(at)))
    return found


def ended(path: Path) -> list[str]:
    """Run keys of the completed runs, in order (a duplicate would be a second run of a period)."""
    return [key for event, key, _, _ in notes(path) if event == "end"]


def period(key: str) -> datetime:
    return datetime.strptime(key.rsplit(":", 1)[1], "%Y%m%dT%H%M%SZ")


def assert_each_second_once_without_gaps(keys: list[str]) -> None:
    assert [key for key, count in Counter(keys).items() if count > 1] == [], "a period ran twice"
    gaps = [(a, b) for a, b in pairwise(sorted(map(period, keys))) if b - a != timedelta(seconds=1)]
    assert gaps == [], "missed periods"


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"RUNS_FILE": str(tmp_path / "runs.txt"), "JOB_SCHEDULE": "* * * * * *", **extra}


def between_runs(runs: Path) -> None:
    """Wait for a moment with no run in progress, at least 0.3 s after the last one ended.

    Killed in the millisecond after a run's work and before the ledger recorded it, the successor
    would run that period again (under the same key): the documented at-least-once edge.
    """

    def quiet() -> bool:
        last = notes(runs)[-1]
        return last[0] == "end" and time.time() - last[3] > 0.3

    wait_until(quiet, "a moment between two runs")


def test_a_job_runs_exactly_once_per_period_across_kill_9_and_a_reload(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    runs = tmp_path / "runs.txt"
    server = start_server("uvicorn", workers=4, env=job_env(tmp_path), **JOBS_APP)
    wait_until(lambda: len(ended(runs)) >= 3, "3 runs", 60)

    between_runs(runs)
    primary = server.wait_for_primary()
    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)
    done = len(ended(runs))
    wait_until(lambda: len(ended(runs)) >= done + 3, "3 runs by the successor", 60)

    between_runs(runs)
    old_workers = server.live_workers()
    server.signal(signal.SIGHUP)
    wait_until(lambda: not any(is_alive(pid) for pid in old_workers), "the old workers to exit", 60)
    done = len(ended(runs))
    wait_until(lambda: len(ended(runs)) >= done + 3, "3 runs after the reload", 60)
    server.stop()

    assert_each_second_once_without_gaps(ended(runs))
    server.assert_never_two_primaries()


def test_a_job_runs_exactly_once_per_period_across_two_instances_kill_9_and_a_reload(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Two instances (2 workers each) in one lock scope. After a kill -9 a standby takes over (at once
    here: the dead primary provably shared its host) and runs the periods missed meanwhile. gunicorn:
    its reload replaces the workers however slowly they start (uvicorn gives up after 5 s)."""
    runs = tmp_path / "runs.txt"
    env = job_env(tmp_path)
    first, second = instances = both_instances(start_server, "gunicorn", env=env, app="apps:jobs_app()")
    wait_until(lambda: len(ended(runs)) >= 3, "3 runs", 60)

    def crash(primary: int, *, whole_instance: bool) -> None:
        owner = owner_of(primary, *instances)
        owner.note_killed(primary)
        if whole_instance:
            os.killpg(owner.process.pid, signal.SIGKILL)  # the master and its workers: a host is gone
        else:
            os.kill(primary, signal.SIGKILL)  # its master starts a new worker
        done = len(ended(runs))
        wait_until(lambda: len(ended(runs)) >= done + 3, "3 runs by the next primary", 60)

    between_runs(runs)
    crash(single_primary(*instances), whole_instance=False)

    between_runs(runs)
    primary = single_primary(*instances)
    owner = owner_of(primary, *instances)
    owner.signal(signal.SIGHUP)  # a reload of the primary's instance: a graceful hand-over
    wait_until(lambda: not is_alive(primary), "the old primary to exit", 60)
    done = len(ended(runs))
    wait_until(lambda: len(ended(runs)) >= done + 3, "3 runs after the reload", 60)

    between_runs(runs)
    crash(single_primary(*instances), whole_instance=True)
    for server in instances:
        server.stop()

    assert_each_second_once_without_gaps(ended(runs))
    assert len({pid for _, _, pid, _ in notes(runs)}) >= 4  # ran on both instances, by four workers
    assert_one_primary_at_a_time(merged_events(first, second))


def test_a_slow_job_never_overlaps_itself_even_across_a_failover(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """Every second, 1.5 s a run: the periods queue up and run one after the other, on one worker."""
    runs = tmp_path / "runs.txt"
    server = start_server("uvicorn", workers=3, env=job_env(tmp_path, JOB_SECONDS="1.5"), **JOBS_APP)
    wait_until(lambda: len(ended(runs)) >= 3, "3 runs", 60)
    primary = server.wait_for_primary()

    def in_mid_run() -> bool:  # not in the moment between a run's end and its record in the ledger
        last = notes(runs)[-1]
        return last[0] == "start" and time.time() - last[3] > 0.3

    wait_until(in_mid_run, "a run in progress")
    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)  # in mid-run: the successor runs that period again
    killed_at = time.time()
    done = len(ended(runs))
    wait_until(lambda: len(ended(runs)) >= done + 3, "3 runs by the successor", 60)
    server.stop()

    # Each run from its start to its end; the killed primary's last run ends when it was killed.
    found = notes(runs)
    started = {(key, pid): at for event, key, pid, at in found if event == "start"}
    finished = {(key, pid): at for event, key, pid, at in found if event == "end"}
    intervals = sorted((at, finished.get(run, killed_at)) for run, at in started.items())
    for (_, end), (start, _) in pairwise(intervals):
        assert start >= end - 0.01, f"a run started at {start} while another ran until {end}"
    keys = ended(runs)
    assert len(keys) == len(set(keys)), "a period ran twice"
    assert all(period(a) < period(b) for a, b in pairwise(keys)), "periods ran out of order"


@pytest.mark.parametrize("policy", ["all", "latest"])
def test_periods_missed_while_the_service_was_down_follow_the_catch_up_policy(
    start_server: Callable[..., Server], tmp_path: Path, policy: str
) -> None:
    runs = tmp_path / "runs.txt"
    env = job_env(tmp_path, JOB_CATCH_UP=policy)
    server = start_server("uvicorn", workers=2, env=env, **JOBS_APP)
    wait_until(lambda: len(ended(runs)) >= 2, "2 runs", 60)
    server.stop()
    before = ended(runs)
    last_before = period(before[-1])
    stopped = time.time()
    wait_until(lambda: time.time() - stopped > 4, "four periods to pass with no server")  # the outage

    server = start_server("uvicorn", workers=2, env=env, **JOBS_APP)
    wait_until(lambda: len(ended(runs)) >= len(before) + 2, "2 runs after the restart", 60)
    server.stop()

    after = ended(runs)[len(before) :]
    if policy == "all":  # every missed period, oldest first
        assert_each_second_once_without_gaps(ended(runs))
    else:  # only the newest of the missed periods, then on as usual
        assert period(after[0]) - last_before >= timedelta(seconds=4), (before, after)
        assert_each_second_once_without_gaps(after)


def task_env(tmp_path: Path, version: str = "v1") -> dict[str, str]:
    return {
        "RUNS_FILE": str(tmp_path / "runs.txt"),
        "TASK_VERSION": version,
        "TASK_GATE": str(tmp_path / "gate"),
    }


def readiness_of_every_worker(server: Server) -> dict[int, dict[str, Any]]:
    return server.answers_from_every_worker("/health/ready")


def job_status(server: Server, name: str) -> dict[str, Any]:
    jobs = server.get("/health/worker").json()["jobs"]
    return next(job for job in jobs if job["name"] == name)


def test_ready_is_503_on_every_worker_while_a_start_up_task_runs_then_200(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    server = start_server("uvicorn", workers=4, env=task_env(tmp_path), **JOBS_APP)
    wait_until(lambda: notes(runs), "the start-up task to start", 60)

    for answer in readiness_of_every_worker(server).values():  # standbys know it from the ledger
        assert answer["status"] == "starting" and "startup:gated:v1" in answer["pending"], answer
    assert server.get("/health/ready").status_code == 503
    assert server.get("/health").status_code == 200  # alive all along
    assert server.get("/health/ready/").status_code == 404  # never a redirect, which probes count as up
    assert httpx.head(f"http://127.0.0.1:{server.port}/health/worker").status_code == 200
    gated = job_status(server, "gated")
    assert isinstance(gated.pop("running_since"), str | None)  # a time on the primary (test_run_ledger.py)
    assert gated == {"name": "gated", "kind": "startup", "version": "v1", "done": False, "last_failure": None}

    gate.touch()

    def ready() -> bool:  # and never 200 before the task has ended
        response = server.get("/health/ready")
        assert response.json()["status"] in ("starting", "ready")
        return response.status_code == 200

    wait_until(ready, "a worker to be ready")
    assert [event for event, *_ in notes(runs)] == ["start", "end"]
    wait_until_every_worker_is_ready(server)
    wait_until(lambda: job_status(server, "gated")["done"], "/health/worker to tell the task is done")


def test_killing_the_primary_mid_task_ends_in_one_completed_run_by_the_next_primary(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    server = start_server("uvicorn", workers=4, env=task_env(tmp_path), **JOBS_APP)
    wait_until(lambda: notes(runs), "the start-up task to start", 60)
    (_, _, first, _) = notes(runs)[0]

    server.note_killed(first)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(notes(runs)) >= 2, "the next primary to run the task again", 60)
    assert all(answer["status"] == "starting" for answer in readiness_of_every_worker(server).values())
    gate.touch()
    wait_until_every_worker_is_ready(server)
    server.stop()

    found = notes(runs)
    assert [event for event, *_ in found] == ["start", "start", "end"], found
    assert found[1][2] == found[2][2] != first  # completed once, by the next primary


def test_a_restart_with_the_same_version_runs_nothing_and_a_new_version_runs_once(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    runs = tmp_path / "runs.txt"
    (tmp_path / "gate").touch()  # the task finishes at once
    for version, expected in [("v1", 1), ("v1", 1), ("v2", 2), ("v2", 2)]:
        server = start_server("uvicorn", workers=3, env=task_env(tmp_path, version), **JOBS_APP)
        wait_until_every_worker_is_ready(server)
        primary = server.wait_for_primary()
        server.note_killed(primary)
        os.kill(primary, signal.SIGKILL)  # a failover does not run it again either
        server.wait_for_primary(timeout=15)
        wait_until_every_worker_is_ready(server)
        server.stop()
        assert len(ended(runs)) == expected, (version, notes(runs))
    assert ended(runs) == ["startup:gated:v1", "startup:gated:v2"]
    assert len(notes(runs)) == 4  # and no run was even started again
