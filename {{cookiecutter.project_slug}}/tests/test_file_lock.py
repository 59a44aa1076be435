"""The file lock: what the lock file says, and why a broken or tampered lock file never yields two
primaries, never crashes a server, and always says what is wrong."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import (
    Election,
    Jobs,
    LockError,
    StartupRun,
    is_primary_worker,
)
from {{ cookiecutter.package_name }}.coordination import jobs as coordination_jobs
from {{ cookiecutter.package_name }}.coordination.file_lock import (
    FileLock,
    FileRunLedger,
    parse_lock_file,
)
from {{ cookiecutter.package_name }}.coordination.jobs import StartupTask
from {{ cookiecutter.package_name }}.coordination.process import boot_id, pid_namespace

from conftest import PACKAGE, PROJECT, Server, service_env, settings_from
from support import eventually, run_scenario, wait_until


@pytest.fixture
def lock_path(lock_env: dict[str, str]) -> Path:
    """LOCK_PATH of the test's scope, in its private directory (created as the service would)."""
    path = Path(lock_env["LOCK_PATH"])
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return path


def lock_file_pid(lock_path: Path) -> int | None:
    holder = parse_lock_file(lock_path.read_text()) if lock_path.exists() else None
    return holder.pid if holder else None


def test_lock_file_shows_the_primary_pid_first(start_server: Callable[..., Server], lock_path: Path) -> None:
    server = start_server("uvicorn", workers=2)
    primary = server.wait_for_primary()

    first_line, *details = lock_path.read_text().splitlines()

    assert first_line == str(primary)  # `cat LOCK_PATH` shows the PID, as the original guide promised
    assert {line.split("=", 1)[0] for line in details} == {"host", "since", "epoch", "boot", "pidns"}
    server.stop()
    assert lock_path.exists()  # never unlinked: unlinking would let two workers lock two inodes


def test_election_start_never_raises_and_recovers_when_the_path_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = tmp_path / "primary.lock"
    link.symlink_to(tmp_path / "target.lock")

    async def scenario() -> None:
        election = Election(FileLock(link), retry_seconds=0.05)
        await election.start()
        assert not election.is_primary
        assert election.lock_error is not None and "symbolic link" in election.lock_error
        # The one-shot API fails closed too: a lock that cannot be attempted makes nobody primary.
        assert await is_primary_worker(Settings(lock_path=link)) == (False, None)
        link.unlink()
        await eventually(lambda: election.is_primary, "promotion once the path is usable")
        assert election.lock_error is None
        await election.stop()

    with caplog.at_level(logging.INFO):
        run_scenario(scenario)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2  # one from the election (not one per retry), one from the one-shot API
    assert "Primary lock is usable again" in caplog.text


def test_deleted_lock_file_is_recreated_by_the_same_primary(
    start_server: Callable[..., Server], lock_path: Path
) -> None:
    server = start_server("uvicorn", workers=4)
    standbys = server.wait_until_started()
    primary = server.wait_for_primary()
    standbys.discard(primary)

    lock_path.unlink()

    wait_until(lambda: lock_file_pid(lock_path) == primary, "the primary to re-lock a new lock file")
    server.wait_for_log("was deleted by hand; locking a new one")
    assert server.primaries() == {primary}
    # The standbys now wait on the new file: killing the primary still fails over at once.
    server.note_killed(primary)
    os.kill(primary, signal.SIGKILL)
    successor = server.wait_for_primary(timeout=10, among=standbys)
    wait_until(lambda: lock_file_pid(lock_path) == successor, "the successor's PID in the lock file")
    server.assert_never_two_primaries()


def test_lock_file_replaced_by_one_held_elsewhere_makes_the_primary_step_down(
    start_server: Callable[..., Server], lock_path: Path, tmp_path: Path
) -> None:
    server = start_server("uvicorn", workers=4)
    primary = server.wait_for_primary()
    # Someone swaps in a file that another party (this test) holds locked.
    replacement = tmp_path / "replacement.lock"
    with replacement.open("w") as held_elsewhere:
        fcntl.flock(held_elsewhere, fcntl.LOCK_EX)
        replacement.rename(lock_path)

        server.wait_for_log(rf"Worker role change: pid={primary}, primary=False")
        assert server.primaries() == set()  # the holder of the new file is the only owner now
    # The other party lets go: one of the workers is elected on the new file.
    new_primary = server.wait_for_primary()
    wait_until(lambda: lock_file_pid(lock_path) == new_primary, "the new primary's PID in the lock file")
    server.assert_never_two_primaries()


def make_unwritable(directory: Path) -> Generator[None]:
    """chmod for ordinary users; root ignores permissions, so for root mark the directory immutable."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(directory)]).returncode:
        pytest.skip("running as root and this file system cannot mark a directory immutable (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


BrokenPath = tuple[Path, str, Callable[[], None]]
"""A lock path that cannot be used, the error it must cause, and how to repair it."""

BROKEN = ["unwritable-directory", "uncreatable-directory", "symlink", "fifo", "foreign-owner"]


@pytest.fixture(params=BROKEN)
def broken_lock_path(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Path, str, Callable[[], None]]]:
    """A lock path that cannot be used, the error it must cause, and how to repair it."""
    case = request.param
    if case == "unwritable-directory":
        directory = tmp_path / "locks"
        directory.mkdir()
        unwritable = make_unwritable(directory)
        next(unwritable)
        try:
            yield directory / "primary.lock", "cannot open the lock file", lambda: next(unwritable, None)
        finally:
            unwritable.close()  # undone even when the test fails before it repairs
    elif case == "uncreatable-directory":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the lock directory should be")
        yield blocker / "locks" / "primary.lock", "cannot create the directory", blocker.unlink
    elif case == "symlink":
        link = tmp_path / "primary.lock"
        link.symlink_to(tmp_path / "elsewhere.lock")
        yield link, "is a symbolic link", link.unlink
    elif case == "fifo":
        fifo = tmp_path / "primary.lock"
        os.mkfifo(fifo, 0o600)
        yield fifo, "is not a regular file", fifo.unlink
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to create a lock file owned by another user")
        foreign = tmp_path / "primary.lock"
        foreign.write_text("")
        os.chown(foreign, 65534, 65534)
        yield foreign, "belongs to uid 65534", lambda: os.chown(foreign, 0, 0)


@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
def test_unusable_lock_path_keeps_workers_standby_serving_and_retrying(
    start_server: Callable[..., Server],
    broken_lock_path: BrokenPath,
    kind: str,
) -> None:
    path, error, repair = broken_lock_path
    server = start_server(kind, workers=2, env={"LOCK_PATH": str(path)})

    assert server.primaries() == set()  # nobody assumes it is primary because locking failed
    line = server.wait_for_log(f"ERROR .*Primary lock unavailable.*{error}")
    assert str(path) in line
    report = server.get("/health/worker").json()
    assert report["role"] == "standby"
    assert error in report["lock_error"] and str(path) in report["lock_error"]

    repair()

    primary = server.wait_for_primary()
    wait_until(lambda: server.get("/health/worker").json()["lock_error"] is None, "lock_error to clear")
    assert lock_file_pid(path) == primary
    server.assert_never_two_primaries()


# -- Attacks and faults: a full disk, failing system calls, hostile files ---------------------------


def descriptors_of(path: Path) -> list[str]:
    """This process's open descriptors of ``path`` (others come and go with other threads)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:
            continue  # closed meanwhile
    return found


def status(lock_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", "status"],
        cwd=PROJECT,
        env=service_env({"LOCK_PATH": str(lock_path)}),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def full_file_system(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A tiny tmpfs filled to the last byte: (its mount point, the file that fills it)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs that can be filled")
    mount_point = tmp_path / "full"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], check=True)
    filler = mount_point / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        assert full.value.errno == errno.ENOSPC
        yield mount_point, filler
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def test_a_full_disk_leaks_no_lock_and_a_primary_exists_once_space_is_freed(
    start_server: Callable[..., Server], full_file_system: tuple[Path, Path]
) -> None:
    mount_point, filler = full_file_system
    lock_path = mount_point / "locks" / "primary.lock"
    server = start_server("uvicorn", workers=3, env={"LOCK_PATH": str(lock_path)})

    line = server.wait_for_log(r"ERROR .*cannot write the lock file .*No space left on device")
    assert str(lock_path) in line and "free space" in line
    assert server.primaries() == set()
    report = server.get("/health/worker").json()
    assert report["role"] == "standby" and "No space left" in report["lock_error"]
    result = status(lock_path)  # nobody holds it: no worker kept the kernel lock without knowing
    assert result.returncode == 1 and "no primary" in result.stderr

    filler.unlink()

    primary = server.wait_for_primary(timeout=15)  # the back-off is at most 10 s
    assert lock_file_pid(lock_path) == primary
    assert status(lock_path).returncode == 0
    server.assert_never_two_primaries()


FAILING_STEPS = [("fcntl", "flock"), ("os", "fstat"), ("os", "pread"), ("os", "pwrite"), ("os", "ftruncate")]
MESSAGES = {
    "flock": "put LOCK_PATH on a local file system that supports file locks",
    "pwrite": "free space on its file system",
    "ftruncate": "free space on its file system",
}


@pytest.mark.parametrize(("module", "function"), FAILING_STEPS, ids=[f for _, f in FAILING_STEPS])
@pytest.mark.parametrize("path", ["try_acquire", "acquire"])
def test_a_failing_step_raises_lock_error_and_leaves_no_descriptor_and_no_lock(
    monkeypatch: pytest.MonkeyPatch, lock_path: Path, module: str, function: str, path: str
) -> None:
    target = fcntl if module == "fcntl" else os
    real = getattr(target, function)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error (injected)")

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert descriptors_of(lock_path) == []
        monkeypatch.setattr(target, function, failing)
        try:
            with pytest.raises(LockError) as error:
                await (lock.try_acquire() if path == "try_acquire" else lock.acquire())
        finally:
            monkeypatch.setattr(target, function, real)
        assert str(lock_path) in str(error.value) and "Input/output error (injected)" in str(error.value)
        assert MESSAGES.get(function, "check the file and its file system") in str(error.value)
        await asyncio.sleep(0.05)  # a waiting thread (acquire) closes its descriptor on its own
        assert descriptors_of(lock_path) == [], "a descriptor of the failed attempt is still open"
        assert not lock.is_held()
        other = FileLock(lock_path)
        assert await other.try_acquire(), "the failed attempt left the kernel lock taken"
        await other.release()

    run_scenario(scenario)


def test_status_fails_when_the_lock_file_cannot_be_read(lock_path: Path) -> None:
    lock_path.symlink_to(lock_path.with_name("elsewhere.lock"))
    result = status(lock_path)
    assert result.returncode == 1
    assert f"cannot read the lock file {lock_path}" in result.stderr


def test_status_fails_when_a_process_holds_the_lock_but_names_no_holder(lock_path: Path) -> None:
    lock_path.touch(mode=0o600)
    with lock_path.open("r+") as nameless:
        fcntl.flock(nameless, fcntl.LOCK_EX)  # a holder that never wrote its details

        result = status(lock_path)

    assert result.returncode == 1
    assert "names no holder" in result.stderr and str(lock_path) in result.stderr


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_lock_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)  # like /tmp itself: anybody could plant the lock file or the ledger there

    async def scenario() -> None:
        with pytest.raises(LockError) as error:
            await FileLock(shared / "primary.lock").try_acquire()
        message = str(error.value)
        assert f"the directory of the lock file {shared / 'primary.lock'} is not the service's own" in message
        assert f"{shared} is writable by other users" in message
        assert f"/tmp/{PACKAGE}/primary.lock" in message  # the fix
        assert not (shared / "primary.lock").exists()  # refused before anything was created

    run_scenario(scenario)


def test_a_missing_lock_directory_is_created_private(tmp_path: Path) -> None:
    lock_path = tmp_path / "new" / "dir" / "primary.lock"

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        await lock.release()

    run_scenario(scenario)
    assert lock_path.parent.stat().st_mode & 0o777 == 0o700
    assert lock_path.stat().st_mode & 0o777 == 0o600


def test_a_symlinked_or_foreign_lock_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    cases = [(tmp_path / "link", "is a symbolic link or not a directory")]
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        cases.append((foreign, "belongs to uid 65534"))

    async def scenario() -> None:
        for directory, problem in cases:
            with pytest.raises(LockError, match=problem):
                await FileLock(directory / "primary.lock").try_acquire()

    run_scenario(scenario)


def test_a_file_at_lock_path_that_is_no_lock_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    config = tmp_path / "config.ini"
    config.write_text("[server]\nport = 8080\n")
    config.chmod(0o600)

    async def scenario() -> None:
        with pytest.raises(LockError, match="names a file that is not a lock file of this service"):
            await FileLock(config).try_acquire()
        lock = FileLock(config)
        with pytest.raises(LockError, match="not a lock file"):
            await lock.acquire()

    run_scenario(scenario)
    assert config.read_text() == "[server]\nport = 8080\n"


def plant_symlink(ledger: Path) -> str:
    ledger.symlink_to(ledger.parent / "elsewhere.sqlite3")
    return "is a symbolic link"


def plant_world_writable(ledger: Path) -> str:
    sqlite3.connect(ledger).close()
    ledger.chmod(0o666)
    return "is writable by other users (mode 666)"


def plant_foreign(ledger: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root to plant a file of another user")
    sqlite3.connect(ledger).close()
    os.chown(ledger, 65534, 65534)
    ledger.chmod(0o444)  # read-only: it would suppress every report
    return "belongs to uid 65534"


@pytest.mark.parametrize("plant", [plant_symlink, plant_world_writable, plant_foreign])
def test_a_planted_run_ledger_is_refused(lock_path: Path, plant: Callable[[Path], str]) -> None:
    ledger_path = lock_path.with_name(f"{lock_path.name}.runs.sqlite3")
    problem = plant(ledger_path)

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        assert isinstance(ledger, FileRunLedger) and ledger.path == ledger_path
        with pytest.raises(LockError) as error:
            await ledger.claim("report", "20260101T070000Z")
        assert f"the run ledger {ledger_path} {problem}" in str(error.value)
        await lock.release()

    run_scenario(scenario)


def test_a_directory_above_the_lock_directory_that_others_control_is_refused(tmp_path: Path) -> None:
    """Another account that owns (or may write) a directory above could rename the service's
    directory away and put its own in place: refused before anything is created there."""
    above = tmp_path / "shared"
    above.mkdir()
    above.chmod(0o777)  # not sticky: anybody may rename what is inside
    lock_path = above / "service" / "primary.lock"

    async def scenario() -> None:
        with pytest.raises(LockError, match=f"{above}, above it, is writable by other users"):
            await FileLock(lock_path).try_acquire()

    run_scenario(scenario)
    assert not (above / "service").exists()


def test_a_child_forked_by_the_primary_does_not_keep_the_lock(lock_path: Path) -> None:
    """A child forked without exec (a process pool under gunicorn) inherits the descriptors; it
    closes the lock's at once, so the lock still dies with the primary."""

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report whether it still holds anything, then linger
            os.write(write_end, b"held" if lock.is_held() else b"free")
            time.sleep(30)
            os._exit(0)
        try:
            assert os.read(read_end, 4) == b"free"
            await lock.release()  # the primary goes; the child lives on
            successor = FileLock(lock_path)
            assert await successor.try_acquire(), "the forked child kept the kernel lock"
            await successor.release()
        finally:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            os.close(read_end)
            os.close(write_end)

    run_scenario(scenario)


def test_status_fails_when_the_named_primary_is_gone_but_the_lock_is_held(lock_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "pass"])
    holder.wait()  # a pid that is certainly not running any more
    lock_path.write_text(
        f"{holder.pid}\nhost=x\nsince=2026-01-01T00:00:00+00:00\nepoch=3\n"
        f"boot={boot_id()}\npidns={pid_namespace()}\n"
    )
    with lock_path.open("r+") as inherited:
        fcntl.flock(inherited, fcntl.LOCK_EX)  # as a forked child of the dead primary would

        result = status(lock_path)

    assert result.returncode == 1
    assert (
        f"names pid {holder.pid} as the primary, which is not running, yet the lock is held" in result.stderr
    )


@pytest.mark.parametrize("epoch", ["9223372036854775807", "\u00b2", "12a"])
def test_a_lock_file_with_a_tampered_epoch_is_refused_with_a_reason(lock_path: Path, epoch: str) -> None:
    lock_path.write_text(f"4242\nhost=x\nsince=2026-01-01T00:00:00+00:00\nepoch={epoch}\n")

    async def scenario() -> None:
        with pytest.raises(LockError, match="not a lock file of this service"):
            await FileLock(lock_path).try_acquire()

    run_scenario(scenario)


def test_each_lock_file_has_a_ledger_of_its_own(lock_path: Path) -> None:
    """Two deployments with two lock files in one directory (prod and staging) share nothing."""

    async def scenario() -> None:
        prod, staging = (
            FileLock(lock_path.with_name("prod.lock")),
            FileLock(lock_path.with_name("staging.lock")),
        )
        assert await prod.try_acquire() and await staging.try_acquire()
        await prod.run_ledger().finish("report", "20260101T070000Z")
        assert await staging.run_ledger().claim("report", "20260101T070000Z") == "claimed"
        await prod.release()
        await staging.release()

    run_scenario(scenario)


def test_a_lock_file_replaced_while_it_was_being_locked_is_not_adopted(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between open() and flock() someone renames another file over LOCK_PATH: the descriptor locks
    a file that is no longer at the path, worthless; the attempt fails and keeps no descriptor."""
    flock_nowait = FileLock._flock_nowait

    def then_replace(self: FileLock, fd: int, *, shared: bool = False) -> bool:
        locked = flock_nowait(self, fd, shared=shared)
        replacement = lock_path.with_name("replacement.lock")
        replacement.touch(mode=0o600)
        replacement.rename(lock_path)
        return locked

    async def scenario() -> None:
        lock = FileLock(lock_path)
        monkeypatch.setattr(FileLock, "_flock_nowait", then_replace)
        before = len(os.listdir("/proc/self/fd"))
        assert not await lock.try_acquire()
        assert not lock.is_held() and len(os.listdir("/proc/self/fd")) == before
        monkeypatch.undo()
        assert await lock.try_acquire()  # the file now at the path is free
        await lock.close()

    run_scenario(scenario)


def test_the_epoch_continues_from_the_lock_file_of_a_holder_with_a_one_digit_pid(lock_path: Path) -> None:
    """PID 1 is common in containers: its lock file's first line is one character long."""
    lock_path.parent.mkdir(mode=0o700, exist_ok=True)
    lock_path.write_text("1\nhost=container\nsince=2026-01-01T00:00:00+00:00\nepoch=41\n")
    lock_path.chmod(0o600)

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        assert lock.epoch == 42
        await lock.close()

    run_scenario(scenario)


def test_the_primary_relocks_a_deleted_lock_file_itself(lock_path: Path) -> None:
    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        epoch = lock.epoch
        lock_path.unlink()
        holding = asyncio.create_task(lock.hold())

        def relocked() -> bool:
            return lock_path.exists() and lock.is_held() and lock.verify() and lock.epoch == epoch + 1

        await eventually(relocked, "the lock file recreated and locked by the same primary", 5)
        holding.cancel()
        await lock.close()

    run_scenario(scenario)


def test_the_ledger_prunes_old_runs_but_keeps_start_up_tasks_for_good(lock_path: Path) -> None:
    """A start-up task's run is the memory of a release: forgetting it would run the task again."""

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        for job, period in [("startup:migrate", "1.0.0"), ("report", "20260101T070000Z")]:
            assert await ledger.claim(job, period) == "claimed"
            await ledger.finish(job, period)
        with sqlite3.connect(lock_path.with_name(f"{lock_path.name}.runs.sqlite3")) as db:
            db.execute("UPDATE runs SET updated = datetime('now', '-40 days')")  # both a month old
        assert await ledger.claim("report", "20260301T070000Z") == "claimed"
        await ledger.finish("report", "20260301T070000Z")  # prunes what is older than 30 days

        assert await ledger.is_done("startup:migrate", "1.0.0")
        assert not await ledger.is_done("report", "20260101T070000Z")
        await lock.release()

    run_scenario(scenario)


def test_the_prune_keeps_each_jobs_latest_run_however_old(lock_path: Path) -> None:
    """A monthly job's last run is more than 30 days old when the next one is due: pruned, the
    job would run last month's period again. Old runs go only when their own job runs again."""
    ledger_path = lock_path.with_name(f"{lock_path.name}.runs.sqlite3")

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        ledger = lock.run_ledger()
        for job, period in [("monthly", "20260101T000000Z"), ("monthly", "20260201T000000Z")]:
            assert await ledger.claim(job, period) == "claimed"
            await ledger.finish(job, period)
        with sqlite3.connect(ledger_path) as db:
            db.execute("UPDATE runs SET updated = datetime('now', '-31 days')")
        assert await ledger.claim("daily", "20260303T000000Z") == "claimed"
        await ledger.finish("daily", "20260303T000000Z")  # another job: prunes nothing of "monthly"
        assert await ledger.last_done("monthly") == "20260201T000000Z"
        assert await ledger.is_done("monthly", "20260101T000000Z")

        assert await ledger.claim("monthly", "20260301T000000Z") == "claimed"
        await ledger.finish("monthly", "20260301T000000Z")  # its own next run prunes its old ones
        assert not await ledger.is_done("monthly", "20260101T000000Z")
        assert await ledger.last_done("monthly") == "20260301T000000Z"
        with sqlite3.connect(ledger_path) as db:  # found by an index, not by reading every row
            plan = db.execute(
                "EXPLAIN QUERY PLAN DELETE FROM runs WHERE job = ? AND updated < ? AND period < ?",
                ("monthly", "2026-01-01", "20260301T000000Z"),
            ).fetchall()
        assert "USING INDEX" in str(plan), plan
        await lock.release()

    run_scenario(scenario)


def test_a_ledger_of_an_older_release_gets_the_index_and_keeps_its_runs(lock_path: Path) -> None:
    ledger_path = lock_path.with_name(f"{lock_path.name}.runs.sqlite3")
    with sqlite3.connect(ledger_path) as db:  # as the previous release created it
        db.execute(
            "CREATE TABLE runs (job TEXT NOT NULL, period TEXT NOT NULL, state TEXT NOT NULL,"
            " epoch INTEGER NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (job, period))"
        )
        db.execute("INSERT INTO runs VALUES ('report', '20260101T070000Z', 'done', 1, datetime('now'))")
    ledger_path.chmod(0o600)

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire()
        assert await lock.run_ledger().last_done("report") == "20260101T070000Z"
        assert await lock.run_ledger().last_done("report") == "20260101T070000Z"  # created once only
        await lock.release()

    run_scenario(scenario)
    with sqlite3.connect(ledger_path) as db:
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs_by_age'").fetchone()


def test_the_primary_runs_a_start_up_task_again_when_the_ledger_lost_it(
    lock_path: Path, lock_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger deleted under a running service: without this, the workers that ask it anew (a
    replaced one) would be not ready until the next failover."""
    monkeypatch.setattr(coordination_jobs, "STARTUP_RECHECK_SECONDS", 0.05)
    settings = settings_from(lock_env)
    runs: list[str] = []

    async def migrate(run: StartupRun) -> None:
        runs.append(run.key)

    jobs = Jobs(settings, [], [StartupTask("migrate", migrate, "v1")])

    async def scenario() -> None:
        election = Election(FileLock(lock_path), [jobs.run_on_primary])
        await election.start()
        ledger = election.lock.run_ledger()

        async def done() -> None:
            while not await ledger.is_done("startup:migrate", "v1"):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(done(), 10)
        lock_path.with_name(f"{lock_path.name}.runs.sqlite3").unlink()  # lost
        await eventually(lambda: len(runs) == 2, "the task to run again")
        await asyncio.wait_for(done(), 10)
        await election.stop()

    run_scenario(scenario)
    assert runs == ["startup:migrate:v1", "startup:migrate:v1"]


def test_a_lock_file_that_cannot_even_be_looked_at_is_not_verified(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory made unreadable under a primary (root ignores permissions, so the failure is
    injected): the primary cannot tell whether LOCK_PATH is still its file, so it must not claim."""

    async def scenario() -> None:
        lock = FileLock(lock_path)
        assert await lock.try_acquire() and lock.verify()
        stat = os.stat

        def unreadable(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if Path(path) == lock_path:
                raise PermissionError(13, "Permission denied", str(path))
            return stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", unreadable)
        assert not lock.verify()
        assert await lock.run_ledger().claim("report", "20260101T070000Z") == "fenced"
        monkeypatch.undo()
        assert lock.verify()
        await lock.close()

    run_scenario(scenario)
