"""What every lease backend (Redis, PostgreSQL) must do with real servers: one primary across
instances, crash failover (at once when the dead holder provably shared this host, after its lease
otherwise), graceful hand-over, and a paused primary that is waited out, never replaced early.

The backend is the one this project was generated with (``contract.BACKEND``); its own fault tests
are in ``test_<backend>_lock.py``. The tests use a 3 s lease (``LOCK_TTL_SECONDS=3``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from {{ cookiecutter.package_name }}.coordination import make_lock

from conftest import (
    Server,
    current_holder,
    service_env,
    settings_from,
)
from contract import BACKEND
from support import (
    both_instances,
    run_scenario,
    single_primary,
    wait_until,
)

TTL = 3.0
RETRY = 0.2
SLACK = 2.0  # generous allowance for process scheduling on a busy machine; catches hangs, not speed
RENEW_EVERY = 0.5  # a 3 s lease is renewed every half second: it runs out at least TTL - 0.5 s after a crash
AT_ONCE = 1.0
"""A same-host crash failover takes milliseconds; a lease that had to expire first takes 2.5 s at
least, so this bound tells them apart even on a busy machine."""


def test_one_primary_across_two_instances(
    start_server: Callable[..., Server], lock_env: dict[str, str]
) -> None:
    first, second = both_instances(start_server)

    primary = single_primary(first, second)

    holder = current_holder(lock_env)
    assert holder is not None and holder.pid == primary
    for server in (first, second):
        answer = server.get("/health/worker").json()
        assert answer["holder"]["pid"] == primary
        assert answer["backend"] == BACKEND
        assert answer["epoch"] == holder.epoch


def test_kill_9_of_the_instance_holding_the_primary_fails_over_within_ttl(
    start_server: Callable[..., Server],
) -> None:
    first, second = both_instances(start_server)
    primary = single_primary(first, second)
    crashed, survivor = (first, second) if primary in first.worker_pids() else (second, first)

    os.killpg(crashed.process.pid, signal.SIGKILL)  # the whole instance: master and workers
    killed_at = time.monotonic()

    new_primary = survivor.wait_for_primary(timeout=TTL + RETRY + SLACK)
    assert survivor.event_time(new_primary, True) - killed_at <= TTL + RETRY + SLACK


def test_kill_9_of_the_primary_among_four_workers_of_one_server_fails_over_at_once(
    start_server: Callable[..., Server],
) -> None:
    """The standbys share the dead primary's host and pid namespace: they prove it dead (its pidfd
    wakes them) and take over within milliseconds, before the server has replaced it."""
    server = start_server("uvicorn", workers=4)
    standbys = server.wait_until_started()
    primary = server.wait_for_primary()
    standbys.discard(primary)

    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)
    killed_at = time.monotonic()

    new_primary = server.wait_for_primary(timeout=TTL + SLACK, among=standbys)
    assert server.event_time(new_primary, True) - killed_at < AT_ONCE
    server.wait_for_log(rf"The primary \({primary}@\S+\) died on this host")
    server.assert_never_two_primaries()


def test_graceful_stop_hands_over_in_under_a_second(start_server: Callable[..., Server]) -> None:
    first, second = both_instances(start_server)
    primary = single_primary(first, second)
    stopping, staying = (first, second) if primary in first.worker_pids() else (second, first)

    assert stopping.stop() == 0

    new_primary = staying.wait_for_primary(timeout=TTL)
    # The release is announced (Redis: PUBLISH, PostgreSQL: NOTIFY); standbys do not wait for
    # their next retry.
    handover = staying.event_time(new_primary, True) - stopping.event_time(primary, False)
    assert handover < 1.0


def test_paused_primary_is_not_replaced_before_its_lease_runs_out_and_steps_down_on_resume(
    start_server: Callable[..., Server],
) -> None:
    # gunicorn: its worker timeout (60 s) tolerates the pause; uvicorn's supervisor would kill the
    # paused worker after 5 s without a health-check answer.
    server = start_server("gunicorn", workers=3, app="apps:ticking_app()", extra=("--timeout", "60"))
    primary = server.wait_for_primary()
    server.wait_for_log(rf"Singleton tick: pid={primary}")

    os.kill(primary, signal.SIGSTOP)
    stopped_at = time.monotonic()
    # The frozen worker cannot log anything: it still looks primary in the log until it resumes.
    # It shares the standbys' host, but a paused process is no proof of death: they wait out its
    # lease (PostgreSQL: its session lives on until the server ends it, idle for a lease).
    successor = wait_until(
        lambda: min(server.primaries() - {primary}, default=None), "a successor", TTL + TTL + SLACK
    )
    assert server.event_time(successor, True) - stopped_at >= TTL - RENEW_EVERY - 0.1
    server.wait_for_log(rf"Singleton tick: pid={successor}")
    os.kill(primary, signal.SIGCONT)

    server.wait_for_log(rf"Worker role change: pid={primary}, primary=False", timeout=TTL)
    lines = server.output().splitlines()
    promoted = next(i for i, line in enumerate(lines) if f"pid={successor}, primary=True" in line)
    ticks_after = [line for line in lines[promoted:] if f"Singleton tick: pid={primary}" in line]
    assert ticks_after == []  # the resumed worker did no singleton work once it was deposed
    assert server.primaries() == {successor}


# -- A holder whose death cannot be proven from here -------------------------------------------------

HOLDER = """
import asyncio, sys
from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import make_lock

async def main() -> None:
    lock = make_lock(Settings())
    assert await lock.try_acquire() and lock.takeover_delay() == 0
    print("holding", flush=True)
    await lock.hold()

asyncio.run(main())
"""


@pytest.fixture
def holder_in_another_pid_namespace(lock_env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A process that holds the lease from a pid namespace of its own (another container, as far as
    pids tell): its pid means another process here, if any."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to start a process in a new pid namespace")
    argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-c", HOLDER]
    env = service_env(lock_env, LOCK_TTL_SECONDS=str(TTL))
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None and process.stdout.readline() == "holding\n"
    yield process
    process.kill()
    process.wait()


def test_a_holder_in_another_pid_namespace_is_waited_out(
    holder_in_another_pid_namespace: subprocess.Popen[str], lock_env: dict[str, str]
) -> None:
    settings = settings_from(lock_env)

    async def scenario() -> None:
        standby = make_lock(settings)
        assert not await standby.try_acquire()
        os.killpg(holder_in_another_pid_namespace.pid, signal.SIGKILL)  # unshare, and the holder
        killed_at = time.monotonic()
        await asyncio.wait_for(standby.acquire(), TTL + SLACK)
        starts_in = time.monotonic() - killed_at + standby.takeover_delay()
        # Its lease (or, PostgreSQL, the wait its record asks for) runs out: no proof, no shortcut.
        assert TTL - RENEW_EVERY - 0.1 <= starts_in <= TTL + RETRY + SLACK
        await standby.close()

    run_scenario(scenario)
