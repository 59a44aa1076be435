"""The clock rules of ``lease.py``, exactly: on a lease kept in memory, with a clock the test can move.

A lease backend (Redis, PostgreSQL) supplies only the store's operations; the rules of time are
``LeaseLock``'s: self-demotion before the lease can expire, the renewal interval, the retries of a
failed renewal, no renewal past the deadline, the takeover wait. Here the store is a few lines in
memory whose answers the test decides, and lease.py's clock is real time plus the jumps a test makes
(a process paused without noticing it), so each rule is checked at its boundary, not within the
slack that real servers need. These tests run in every generated project, whatever its backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.coordination import LockError, lease
from {{ cookiecutter.package_name }}.coordination.base import Holder, RunLedger
from {{ cookiecutter.package_name }}.coordination.lease import Acquisition, LeaseLock, belief_window
from {{ cookiecutter.package_name }}.coordination.process import ProcessId, start_time, this_view

from support import run_scenario


class Clock:
    """``time`` as lease.py sees it: the real monotonic clock plus the jumps of the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    moved = Clock()
    monkeypatch.setattr(lease, "time", moved)  # lease.py reads time.monotonic() only
    return moved


class MemoryLease(LeaseLock):
    """A lease in memory: the test decides what each attempt and each renewal answers."""

    def __init__(self, clock: Clock, ttl: float = 3.0, retry_seconds: float = 0.1) -> None:
        super().__init__(ttl, retry_seconds)
        self.clock = clock
        self.answers: list[Acquisition] = []  # the next answers of attempts (then: won, no wait)
        self.asked_to_wait: list[float] = []  # wait_without_record of each attempt
        self.acquire_takes = 0.0  # clock seconds an attempt takes
        self.renewals: list[float] = []  # clock times at which renewals were sent
        self.renewal: str = "ok"  # "ok", "lost", "fail" (LockError), or "slow" (answers in 50 ms)
        self.released: list[str] = []
        self.ended: list[str] = []  # tokens of dead holders whose lease was ended
        self.announced = asyncio.Event()

    async def _acquire_lease(self, token: str, holder: Holder, wait_without_record: float) -> Acquisition:
        self.asked_to_wait.append(wait_without_record)
        self.clock.jump(self.acquire_takes)
        return self.answers.pop(0) if self.answers else Acquisition(won=True, epoch=1)

    async def _renew_lease(self) -> bool:
        self.renewals.append(self.clock.monotonic())
        if self.renewal == "fail":
            raise LockError("the store failed")
        if self.renewal == "slow":
            await asyncio.sleep(0.05)
        return self.renewal != "lost"

    async def _release_lease(self, token: str) -> None:
        self.released.append(token)

    async def _end_dead_lease(self, token: str) -> bool:
        self.ended.append(token)
        return True

    @asynccontextmanager
    async def _announcements(self) -> AsyncIterator[asyncio.Event]:
        yield self.announced

    async def read_holder(self) -> Holder | None:
        return None

    def run_ledger(self) -> RunLedger:
        raise NotImplementedError

    async def close(self) -> None:
        await self.release()


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in pairwise(times)]


@pytest.mark.parametrize(("ttl", "window"), [(10.0, 8.0), (3.0, 2.0), (1.5, 1.0)])
def test_a_holder_counts_itself_primary_for_ttl_minus_the_margin_and_not_a_moment_longer(
    clock: Clock, ttl: float, window: float
) -> None:
    """The margin is 2 s, or a third of a short ttl; counted from the last renewal."""
    assert belief_window(ttl) == window

    async def scenario() -> None:
        lock = MemoryLease(clock, ttl=ttl)
        assert await lock.try_acquire() and lock.is_held()
        clock.jump(window - 0.1)
        assert lock.is_held()
        clock.jump(0.2)
        assert not lock.is_held()
        assert lock.takeover_delay() == 0

    run_scenario(scenario)


def test_the_deadline_counts_from_before_the_request_was_sent(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)
        lock.acquire_takes = 1.5  # the store answered late: the lease began when it was asked for
        assert await lock.try_acquire()
        assert lock.is_held()
        clock.jump(0.6)  # 2.1 s after the request, 0.6 s after the answer
        assert not lock.is_held()

    run_scenario(scenario)


@pytest.mark.parametrize(("ttl", "every"), [(3.0, 0.5), (0.9, 0.3)])
def test_the_primary_renews_every_third_of_its_ttl_but_at_least_every_half_second(
    clock: Clock, ttl: float, every: float
) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock, ttl=ttl)
        assert await lock.try_acquire()
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(5 * every + every / 2)
        assert not holding.done() and lock.is_held()
        holding.cancel()
        assert len(lock.renewals) >= 4, lock.renewals
        assert all(every - 0.03 <= gap <= every + 0.15 for gap in gaps(lock.renewals)), gaps(lock.renewals)

    run_scenario(scenario)


def test_a_failed_renewal_is_retried_three_times_as_often_then_the_holder_steps_down_at_the_deadline(
    clock: Clock,
) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)  # ttl 3: renews every 0.5 s, retries every 0.5 / 3 s, gives up at 2 s
        assert await lock.try_acquire()
        lock.renewal = "fail"
        started = time.monotonic()
        with pytest.raises(LockError, match=r"was not renewed for 2\.0 s"):
            await asyncio.wait_for(lock.hold(), 5)
        assert 2.0 - 0.05 <= time.monotonic() - started <= 2.0 + 0.5
        assert not lock.is_held()
        retries = gaps(lock.renewals)
        assert len(retries) >= 6, retries
        assert all(0.5 / 3 - 0.03 <= gap <= 0.5 / 3 + 0.15 for gap in retries), retries

    run_scenario(scenario)


def test_a_slow_store_keeps_the_lease(clock: Clock) -> None:
    """Renewals that take 50 ms are well within the time left before the deadline."""

    async def scenario() -> None:
        lock = MemoryLease(clock)
        lock.renewal = "slow"
        assert await lock.try_acquire()
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(3)  # longer than the 2 s window: only renewals that succeed keep it
        assert not holding.done() and lock.is_held()
        holding.cancel()

    run_scenario(scenario)


def test_a_lost_lease_ends_hold_at_once_and_the_holder_is_no_longer_primary(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)
        assert await lock.try_acquire()
        lock.renewal = "lost"
        await asyncio.wait_for(lock.hold(), 1)  # returns (lost), at the first renewal
        assert len(lock.renewals) == 1
        assert not lock.is_held() and lock.takeover_delay() == 0

    run_scenario(scenario)


def test_a_holder_resumed_after_a_pause_steps_down_without_renewing(clock: Clock) -> None:
    """A pause past the deadline (SIGSTOP, a frozen VM): the store may have a new holder by now, so
    the resumed holder must not renew (it might still find its lease) and carry on."""

    async def scenario() -> None:
        lock = MemoryLease(clock)
        assert await lock.try_acquire()
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(0.1)
        clock.jump(2.5)  # paused for longer than the 2 s window, between two renewals
        with pytest.raises(LockError, match="stepped down before the lease could expire"):
            await asyncio.wait_for(holding, 1)
        assert [renewed for renewed in lock.renewals if renewed > clock.monotonic() - 1] == []
        assert not lock.is_held()

    run_scenario(scenario)


def test_the_takeover_wait_runs_from_the_answer_and_ends_with_the_lease(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock, ttl=10)
        lock.answers = [Acquisition(won=True, epoch=7, wait_seconds=5.0, why="vanished")]
        lock.acquire_takes = 1.0  # the wait starts when the answer arrives, not when it was asked
        assert await lock.try_acquire()
        assert lock.epoch == 7
        assert 4.9 < lock.takeover_delay() <= 5.0
        clock.jump(2)
        assert 2.9 < lock.takeover_delay() <= 3.0
        await lock.release()
        assert lock.takeover_delay() == 0 and lock.released

        won = MemoryLease(clock)
        assert await won.try_acquire() and won.takeover_delay() == 0  # no wait: none at all

    run_scenario(scenario)


def test_a_standby_remembers_the_longest_lease_it_has_seen_for_when_there_is_no_record(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)  # ttl 3: on its own it would wait 2 s without a record
        lock.answers = [
            Acquisition(won=False, holder_ttl=30.0),
            Acquisition(won=False, holder_ttl=None),  # a record that does not tell
            Acquisition(won=False, holder_ttl=1.0),  # a shorter one does not make it forget
        ]
        for _ in range(3):
            assert not await lock.try_acquire()
        assert await lock.try_acquire()
        assert lock.asked_to_wait == [2.0, 28.0, 28.0, 28.0]

    run_scenario(scenario)


def test_a_lost_attempt_leaves_the_lock_not_held(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)
        lock.answers = [Acquisition(won=False)]
        assert not await lock.try_acquire()
        assert not lock.is_held() and lock.takeover_delay() == 0
        await lock.release()
        assert lock.released == []  # nothing to give back

    run_scenario(scenario)


def test_a_standby_tries_again_at_once_when_a_release_is_announced(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock, retry_seconds=30)
        lock.answers = [Acquisition(won=False), Acquisition(won=False)]
        waiting = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0.1)
        assert len(lock.asked_to_wait) == 1 and not waiting.done()
        lock.announced.set()
        await asyncio.sleep(0.1)
        assert len(lock.asked_to_wait) == 2 and not waiting.done()  # lost again: waits again
        lock.announced.set()
        await asyncio.wait_for(waiting, 1)
        assert lock.is_held()

    run_scenario(scenario)


def test_a_standby_retries_every_retry_interval_without_announcements(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock, retry_seconds=0.2)
        lock.answers = [Acquisition(won=False)] * 3
        started = time.monotonic()
        await asyncio.wait_for(lock.acquire(), 2)
        assert len(lock.asked_to_wait) == 4
        assert 0.6 - 0.05 <= time.monotonic() - started <= 0.6 + 0.4

    run_scenario(scenario)


def test_release_gives_the_lease_back_once_and_the_holder_stops_counting_itself_primary(clock: Clock) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)
        assert await lock.try_acquire()
        token = lock.token
        await lock.release()
        await lock.release()
        assert lock.released == [token] and not lock.is_held()

    run_scenario(scenario)


def test_the_first_renewal_comes_one_interval_after_the_acquisition(clock: Clock) -> None:
    """Not at once: the schedule starts from the request that took the lease."""

    async def scenario() -> None:
        lock = MemoryLease(clock)
        acquired_at = clock.monotonic()
        assert await lock.try_acquire()
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(0.7)
        holding.cancel()
        assert lock.renewals and lock.renewals[0] - acquired_at >= lock.renew_every - 0.03, lock.renewals

    run_scenario(scenario)


def test_an_attempt_cancelled_while_the_lease_was_being_taken_gives_it_back(clock: Clock) -> None:
    """The store granted the lease, but the worker is shutting down (its task was cancelled while it
    waited for the answer): keeping it would leave a lease nobody renews, and block everyone."""

    class SlowStore(MemoryLease):
        async def _acquire_lease(self, token: str, holder: Holder, wait_without_record: float) -> Acquisition:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the shutdown arrives while the store answers (a cancellation it swallowed)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            return Acquisition(won=True, epoch=1)

    async def scenario() -> None:
        lock = SlowStore(clock)
        with pytest.raises(asyncio.CancelledError):
            await lock.try_acquire()
        assert lock.released and not lock.is_held()

    run_scenario(scenario)


@pytest.mark.parametrize("wait", [0.0, 0.5])
def test_a_takeover_wait_is_logged_with_its_reason_and_none_is_logged_without_one(
    clock: Clock, caplog: pytest.LogCaptureFixture, wait: float
) -> None:
    async def scenario() -> None:
        lock = MemoryLease(clock)
        lock.answers.append(Acquisition(won=True, epoch=2, wait_seconds=wait, why="vanished"))
        with caplog.at_level(logging.INFO, logger=lease.__name__):
            assert await lock.try_acquire()
        await lock.release()

    run_scenario(scenario)
    said = [
        record.getMessage() for record in caplog.records if "Won the primary lease" in record.getMessage()
    ]
    if wait:
        assert len(said) == 1 and "waiting 0.5 s" in said[0] and lease.WHY_WAIT["vanished"] in said[0]
    else:
        assert said == []


def test_failed_renewals_are_counted_and_logged_and_a_lost_lease_is_logged(
    clock: Clock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an operator sees of a struggling primary: WARNING lines and the metric they alert on."""
    counted: list[None] = []
    monkeypatch.setattr(lease, "count_renew_failure", lambda: counted.append(None))

    async def scenario() -> None:
        lock = MemoryLease(clock)
        assert await lock.try_acquire()
        lock.renewal = "fail"
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(0.9)  # the first renewal at 0.5 s fails, and a retry or two after it
        lock.renewal = "lost"
        await asyncio.wait_for(holding, 1)

    with caplog.at_level(logging.WARNING, logger=lease.__name__):
        run_scenario(scenario)
    failed = [r for r in caplog.records if r.getMessage().startswith("Renewing the primary lease failed")]
    assert len(counted) == len(failed) >= 2
    assert any("is gone or held by another worker" in r.getMessage() for r in caplog.records)


def test_hold_returns_when_the_lease_is_released_meanwhile(clock: Clock) -> None:
    """A shutdown releases the lease while ``hold`` sleeps until its next renewal: it simply ends."""

    async def scenario() -> None:
        lock = MemoryLease(clock)
        assert await lock.try_acquire()
        holding = asyncio.create_task(lock.hold())
        await asyncio.sleep(0.1)
        await lock.release()
        await asyncio.wait_for(holding, 1)  # no error, no renewal of a lease given back
        assert lock.renewals == []

    run_scenario(scenario)


# -- A holder that provably died on this host ---------------------------------------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this host that the test can pause, kill and leave unreaped: a holder."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def token_of(pid: int, start: str, view: str | None = None) -> str:
    """A holder's token naming process ``pid`` (started at ``start``) as lease.new_token writes it."""
    process = ProcessId(view=this_view() if view is None else view, pid=pid, start=start)
    return f"{pid}@host#0123 {process.encode()}"


def held_by(token: str) -> Acquisition:
    return Acquisition(won=False, holder_token=token)


@pytest.mark.parametrize("how", ["reaped", "zombie", "pid-reused"])
def test_a_holder_that_provably_died_on_this_host_is_not_waited_for(
    clock: Clock, child: subprocess.Popen[bytes], how: str
) -> None:
    """Gone, reaped or not (a zombie has no thread left to act), or its pid now names another process
    (the same pid, another start time): its lease is ended under its token, and taken at once."""
    started = start_time(child.pid)
    if how == "pid-reused":  # the live child is not the holder that the record names
        token = token_of(child.pid, str(int(started) - 1))
    else:
        token = token_of(child.pid, started)
        os.kill(child.pid, signal.SIGKILL)
        if how == "reaped":
            child.wait()
        else:
            wait_for_state(child.pid, "Z")

    async def scenario() -> None:
        lock = MemoryLease(clock, retry_seconds=1)
        lock.answers = [held_by(token)]
        assert await lock.try_acquire()  # ended, then won at the second attempt, at once
        assert lock.ended == [token] and len(lock.asked_to_wait) == 2

    run_scenario(scenario)


@pytest.mark.parametrize("how", ["running", "paused", "another-view", "unparsable"])
def test_a_holder_without_proof_of_death_is_never_replaced(
    clock: Clock, child: subprocess.Popen[bytes], how: str
) -> None:
    """Running, paused (SIGSTOP), seen by another pid or time namespace or boot (its numbers mean
    nothing here: here its pid is a process of another start time, which would prove a holder of
    this view gone), or a token of an older version: the lease stands."""
    token = token_of(child.pid, start_time(child.pid))
    if how == "another-view":
        token = token_of(child.pid, str(int(start_time(child.pid)) - 1), "0-other-boot,pid1,time1")
    elif how == "paused":
        os.kill(child.pid, signal.SIGSTOP)
        wait_for_state(child.pid, "T")
    elif how == "unparsable":
        token = f"{child.pid}@host#0123"

    async def scenario() -> None:
        lock = MemoryLease(clock, retry_seconds=0.05)
        lock.answers = [held_by(token)] * 5
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.2)  # retried, and retried: still held
        assert lock.ended == [] and len(lock.asked_to_wait) >= 3

    run_scenario(scenario)


def test_a_standby_on_the_holders_host_wakes_up_when_the_holder_exits(
    clock: Clock, child: subprocess.Popen[bytes]
) -> None:
    """No polling: a retry interval of 30 s, yet the standby acts within milliseconds of the kill."""
    token = token_of(child.pid, start_time(child.pid))

    async def scenario() -> None:
        lock = MemoryLease(clock, retry_seconds=30)
        lock.answers = [held_by(token)] * 2
        acquiring = asyncio.create_task(lock.acquire())
        await asyncio.sleep(0.2)
        assert not acquiring.done() and len(lock.asked_to_wait) == 1  # looked once, now waits
        os.kill(child.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(acquiring, 5)
        assert time.monotonic() - killed_at < 0.5
        assert lock.ended == [token] and lock.is_held()

    run_scenario(scenario)


def wait_for_state(pid: int, state: str) -> None:
    """Wait until ``/proc/<pid>/stat`` shows ``state`` (Z: a zombie, T: stopped)."""
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != state:
        assert time.monotonic() < deadline, f"process {pid} never reached state {state}"
        time.sleep(0.01)
