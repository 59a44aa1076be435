"""Prometheus metrics that stay right with many workers (``GET /metrics``).

A scrape reaches one worker, whichever the server hands the connection to, yet the numbers must
describe them all: ``primary_worker_status`` summed over the workers is 1. So every worker writes its
metrics to files in a directory that the workers of its server share (prometheus-client's
multiprocess mode), and the worker that answers a scrape adds them up.

* The directory is ``PROMETHEUS_MULTIPROC_DIR`` if you set it, else one of this service's own under
  the temporary directory, named after the server's master process (the workers' parent: its pid,
  start time and pid namespace): two servers, or one server started again, never mix their numbers,
  and directories of servers that have stopped are removed (only those of this pid namespace, which
  is all a process can see: containers sharing ``/tmp`` leave each other's alone).
* A worker that exits says so (its gauges are dropped); one that was killed (``kill -9``) cannot, so
  every scrape first drops the gauges of workers that no longer run. Counters of exited workers are
  kept, so totals never go down.
* Metrics never stop a worker: if they cannot be written, the worker logs one ERROR and goes on
  without them.

The election, the lease backends and the singleton jobs report here; nothing is counted per request.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from .coordination.process import is_running, pid_namespace, start_time

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

logger = logging.getLogger(__name__)

PACKAGE = __name__.partition(".")[0]
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CHOSEN_VARIABLE = f"{PACKAGE.upper()}_METRICS_DIR_CHOSEN"
"""Set beside the directory when this module chose it: a process started by a worker (which inherits
both) then knows that the directory belongs to another server and chooses its own."""
WORKER_FILE = re.compile(r"_(\d+)\.db$")
SERVER_DIRECTORY = re.compile(r"\d+-(\d+)-(\d*)")
"""``<pid namespace>-<master pid>-<master start time>``"""


@dataclass(frozen=True)
class WorkerMetrics:
    """The metrics this worker writes (see the module's docstring)."""

    primary_status: Gauge
    transitions: Counter
    lock_errors: Counter
    renew_failures: Counter
    job_runs: Counter
    missed_periods: Counter


def metrics_directory() -> Path:
    """Where the workers of this server keep their metrics (created, private to this user)."""
    configured = os.environ.get(DIRECTORY_VARIABLE)
    if configured and configured != os.environ.get(CHOSEN_VARIABLE):
        return Path(configured)
    base = Path(tempfile.gettempdir()) / f"{PACKAGE}-metrics-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = base.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not base.is_dir() or base.is_symlink():
        raise OSError(f"{base} is not this user's private directory; remove it, or set {DIRECTORY_VARIABLE}")
    namespace = "".join(filter(str.isdigit, pid_namespace())) or "0"
    for old in base.glob(f"{namespace}-*"):  # servers of this pid namespace that have stopped
        if (name := SERVER_DIRECTORY.fullmatch(old.name)) and not (
            is_running(int(name[1])) and start_time(int(name[1])) == name[2]
        ):
            shutil.rmtree(old, ignore_errors=True)
    master = os.getppid()
    directory = base / f"{namespace}-{master}-{start_time(master)}"
    directory.mkdir(mode=0o700, exist_ok=True)
    os.environ[CHOSEN_VARIABLE] = str(directory)
    return directory


@cache
def worker_metrics() -> WorkerMetrics:
    """This worker's metrics, created on first use (after the directory is known)."""
    try:
        directory = metrics_directory()
    except OSError as exc:
        directory = Path(tempfile.mkdtemp(prefix=f"{PACKAGE}-metrics-"))
        logger.error("Metrics of this worker only (%s): %s", directory, exc)
    os.environ[DIRECTORY_VARIABLE] = str(directory)  # where prometheus-client writes
    from prometheus_client import Counter, Gauge, values

    # prometheus-client picks its storage when it is first imported; pick again, now that the
    # directory is set, in case something imported it earlier.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return WorkerMetrics(
        primary_status=Gauge(
            "primary_worker_status",
            "1 on the primary worker, 0 on a standby (one series per live worker, label pid)",
            multiprocess_mode="liveall",
        ),
        transitions=Counter(
            "primary_worker_transitions", "Promotions and demotions of this service's workers"
        ),
        lock_errors=Counter("primary_lock_errors", "Attempts at the primary lock that failed"),
        renew_failures=Counter(
            "primary_lease_renew_failures", "Renewals of the primary lease that failed (lease backends)"
        ),
        job_runs=Counter("singleton_job_runs", "Runs of jobs and start-up tasks", ["job", "outcome"]),
        missed_periods=Counter("singleton_job_missed_periods", "Periods of a job that were skipped", ["job"]),
    )


def set_primary(primary: bool) -> None:
    _safely(lambda metrics: metrics.primary_status.set(1 if primary else 0))


def count_transition() -> None:
    _safely(lambda metrics: metrics.transitions.inc())


def count_lock_error() -> None:
    _safely(lambda metrics: metrics.lock_errors.inc())


def count_renew_failure() -> None:
    _safely(lambda metrics: metrics.renew_failures.inc())


def count_job_run(job: str, outcome: str) -> None:
    """``outcome``: done, failed or timeout."""
    _safely(lambda metrics: metrics.job_runs.labels(job=job, outcome=outcome).inc())


def count_missed_periods(job: str, periods: int) -> None:
    _safely(lambda metrics: metrics.missed_periods.labels(job=job).inc(periods))


_broken = False


def _safely(update: Callable[[WorkerMetrics], None]) -> None:
    """Apply ``update`` to this worker's metrics; after a failure (a full disk, a directory removed
    by hand), log it once and go on without metrics: they must never stop the election."""
    global _broken
    if _broken:
        return
    try:
        update(worker_metrics())
    except Exception:
        _broken = True
        logger.exception("Metrics cannot be written; this worker goes on without them")


def exposition() -> tuple[bytes, str] | None:
    """The metrics of every worker of this server in Prometheus's text format, and its content type;
    None if this worker has no metrics (see ``_safely``)."""
    _safely(lambda metrics: None)  # this worker's metrics exist, so the directory is chosen
    if _broken:
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

    directory = os.environ[DIRECTORY_VARIABLE]
    for name in os.listdir(directory):
        if (match := WORKER_FILE.search(name)) and not is_running(pid := int(match[1])):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]  # a killed worker
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exits() -> None:
    """This worker stops: drop its gauges, so that the sums count only running workers."""
    if DIRECTORY_VARIABLE in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), os.environ[DIRECTORY_VARIABLE])  # type: ignore[no-untyped-call]
