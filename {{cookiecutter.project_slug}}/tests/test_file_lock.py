"""The file lock: what the lock file says, and why a broken or tampered lock file never yields two
primaries, never crashes a server, and always says what is wrong."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import Election, is_primary_worker
from {{ cookiecutter.package_name }}.coordination.file_lock import FileLock, parse_lock_file

from conftest import Server
from support import eventually, run_scenario, wait_until


@pytest.fixture
def lock_path(lock_env: dict[str, str]) -> Path:
    return Path(lock_env["LOCK_PATH"])


def lock_file_pid(lock_path: Path) -> int | None:
    holder = parse_lock_file(lock_path.read_text()) if lock_path.exists() else None
    return holder.pid if holder else None


def test_lock_file_shows_the_primary_pid_first(start_server: Callable[..., Server], lock_path: Path) -> None:
    server = start_server("uvicorn", workers=2)
    primary = server.wait_for_primary()

    first_line, *details = lock_path.read_text().splitlines()

    assert first_line == str(primary)  # `cat LOCK_PATH` shows the PID, as the original guide promised
    assert {line.split("=", 1)[0] for line in details} == {"host", "since", "epoch"}
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
    server.wait_for_log("deleted or replaced by hand")
    assert server.primaries() == {primary}
    # The standbys now wait on the new file: killing the primary still fails over at once.
    os.kill(primary, signal.SIGKILL)
    server.note_killed(primary)
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


def make_unwritable(directory: Path) -> Iterator[None]:
    """chmod for ordinary users; root ignores permissions, so for root mark the directory immutable."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield
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

BROKEN = ["unwritable-directory", "uncreatable-directory", "symlink", "foreign-owner"]


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
        yield directory / "primary.lock", "cannot open the lock file", lambda: next(unwritable, None)
    elif case == "uncreatable-directory":
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the lock directory should be")
        yield blocker / "locks" / "primary.lock", "cannot create the lock directory", blocker.unlink
    elif case == "symlink":
        link = tmp_path / "primary.lock"
        link.symlink_to(tmp_path / "elsewhere.lock")
        yield link, "is a symbolic link", link.unlink
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
