"""The primary lock as a kernel file lock: ``flock(2)`` on ``LOCK_PATH``.

Why flock: the kernel drops the lock the instant the holding process dies, even after ``kill -9``, so
there is never a stale lock to clean up, and a worker blocked in ``flock()`` wakes up at that instant.
That is what makes failover take milliseconds.

Three rules keep it to exactly one holder:

* The file is opened with ``O_NOFOLLOW`` (a symbolic link planted at the path is refused) and
  ``O_CLOEXEC`` (no child process inherits the lock), and must belong to the service's own user.
* The file is never unlinked, not even on release: if it were, two processes could lock two different
  inodes under the same name and both believe they are primary.
* After every acquisition the holder checks that the path still names the inode it locked, and keeps
  checking about once a second while primary, because someone may delete or replace the file by hand.

The file's content is for humans: the holder's PID on the first line (``cat LOCK_PATH`` prints it),
then its host, since when it holds the lock, and the epoch (a counter of acquisitions).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from .base import Holder, LockError

logger = logging.getLogger(__name__)
T = TypeVar("T")

VERIFY_INTERVAL_SECONDS = 1.0
"""How often the primary checks that the lock file at LOCK_PATH is still the one it holds."""


class FileLock:
    """The primary lock of every worker (and container) that shares one lock file."""

    backend = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = f"lock file {path}"
        self.epoch = 0
        self._fd: int | None = None
        self._holder: Holder | None = None

    async def try_acquire(self) -> bool:
        fd = self._open()
        if not self._flock_nowait(fd):
            os.close(fd)
            return False
        return self._take(fd)

    async def acquire(self) -> None:
        while True:
            fd = self._open()
            await _flock_in_thread(fd)
            if self._take(fd):
                return

    async def hold(self) -> None:
        while self._fd is not None:
            await asyncio.sleep(VERIFY_INTERVAL_SECONDS)
            if not self._names_locked_file(self._fd):
                self._relock_after_tampering()

    def is_held(self) -> bool:
        return self._fd is not None

    def takeover_delay(self) -> float:
        return 0.0  # the kernel never grants a lock that another process still holds

    def verify(self) -> bool:
        """Held, and LOCK_PATH still names the locked file (checked before every ledger claim)."""
        return self._fd is not None and self._names_locked_file(self._fd)

    def run_ledger(self) -> FileRunLedger:
        return FileRunLedger(self)

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._holder = self._fd, None, None
            os.close(fd)  # closing the descriptor drops the flock; the file itself stays

    async def read_holder(self) -> Holder | None:
        if self._holder is not None:
            return self._holder
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LockError(f"cannot read the lock file {self.path}: {exc.strerror}") from exc
        try:
            # A shared lock is granted only while nobody holds the exclusive one. The probe is
            # dropped by os.close() below and never delays a waiting worker by more than that.
            if self._flock_nowait(fd, shared=True):
                return None
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            return parse_lock_file(text) or Holder(pid=0, host="unknown", since="", epoch=0)
        finally:
            os.close(fd)

    async def close(self) -> None:
        await self.release()

    # -- the details -------------------------------------------------------------------------

    def _open(self) -> int:
        """Open (creating if needed) the lock file; every failure explains how to fix it."""
        directory = self.path.parent
        fix = f"make {directory} writable for uid {os.geteuid()}, or set LOCK_PATH to a writable location"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LockError(
                f"cannot create the lock directory {directory} for {self.path}: {exc.strerror}; {fix}"
            ) from exc
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockError(
                    f"the lock path {self.path} is a symbolic link, which is refused because it "
                    "could point the lock anywhere; remove the link, or set LOCK_PATH to another path"
                ) from exc
            raise LockError(f"cannot open the lock file {self.path}: {exc.strerror}; {fix}") from exc
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file; remove it, or set LOCK_PATH to another path"
        elif info.st_uid != os.geteuid():
            problem = (
                f"belongs to uid {info.st_uid}, not to this service's uid {os.geteuid()}, and a process "
                "of that account could hold it forever; remove it, or set LOCK_PATH to a directory "
                "only this service can write (e.g. /run/<service>/primary.lock)"
            )
        if problem:
            os.close(fd)
            raise LockError(f"the lock file {self.path} {problem}")
        return fd

    def _flock_nowait(self, fd: int, *, shared: bool = False) -> bool:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            raise LockError(
                f"flock() failed on {self.path}: {exc.strerror}; put LOCK_PATH on a local file "
                "system that supports file locks"
            ) from exc
        return True

    def _names_locked_file(self, fd: int) -> bool:
        """Whether LOCK_PATH still names the inode open as ``fd`` (not deleted, not replaced)."""
        try:
            at_path = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        ours = os.fstat(fd)
        return (at_path.st_dev, at_path.st_ino) == (ours.st_dev, ours.st_ino)

    def _take(self, fd: int) -> bool:
        """Adopt a freshly locked descriptor as the primary lock, unless its file is no longer at the path."""
        if not self._names_locked_file(fd):
            os.close(fd)  # we locked a file that was deleted or replaced meanwhile: worthless
            return False
        previous = parse_lock_file(os.pread(fd, 4096, 0).decode(errors="replace"))
        self.epoch = max(self.epoch, previous.epoch if previous else 0) + 1
        self._holder = Holder.me(self.epoch)
        content = f"{self._holder.pid}\nhost={self._holder.host}\nsince={self._holder.since}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{content}epoch={self.epoch}\n".encode(), 0)
        self._fd = fd
        return True

    def _relock_after_tampering(self) -> None:
        """The lock file was deleted or replaced: lock the file now at the path, or give up the lock."""
        old_fd, self._fd, self._holder = self._fd, None, None
        logger.warning("Lock file %s was deleted or replaced by hand; re-locking it", self.path)
        try:
            fd = self._open()
            if not self._flock_nowait(fd):
                os.close(fd)
                logger.warning("Another worker holds the new lock file %s; stepping down", self.path)
            elif not self._take(fd):
                logger.warning("Lock file %s changed again while re-locking; stepping down", self.path)
        finally:
            if old_fd is not None:
                os.close(old_fd)


class FileRunLedger:
    """The run ledger of the file backend: a small SQLite database beside the lock file.

    Each claim is one SQLite transaction (``BEGIN IMMEDIATE`` takes SQLite's own write lock), so even
    two processes that both believe they are primary, in the second after someone replaced the lock
    file by hand, cannot both claim one period. Rows older than ``KEEP_DAYS`` are pruned.
    """

    KEEP_DAYS = 30

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock
        self.path = lock.path.with_name(f"{lock.path.stem}.runs.sqlite3")

    async def claim(self, run_id: str) -> bool:
        if not self.lock.verify():
            return False  # fenced: only the holder of the file now at LOCK_PATH may claim
        return await asyncio.to_thread(self._transaction, self._claim, run_id, self.lock.epoch)

    async def finish(self, run_id: str) -> None:
        await asyncio.to_thread(self._transaction, self._set_done, run_id, self.lock.epoch)

    async def abandon(self, run_id: str) -> None:
        sql = "DELETE FROM runs WHERE run_id = ? AND state = 'claimed' AND epoch = ?"
        await asyncio.to_thread(self._transaction, lambda db: db.execute(sql, (run_id, self.lock.epoch)))

    async def latest_finished(self, prefix: str) -> str | None:
        sql = "SELECT max(run_id) FROM runs WHERE state = 'done' AND run_id LIKE ? || '%'"
        row = await asyncio.to_thread(self._transaction, lambda db: db.execute(sql, (prefix,)).fetchone())
        return row[0] if row else None

    @staticmethod
    def _claim(db: sqlite3.Connection, run_id: str, epoch: int) -> bool:
        row = db.execute("SELECT state, epoch FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None and (row[0] == "done" or row[1] >= epoch):
            return False  # done, or in progress under this or a newer epoch
        # New, or claimed by an earlier primary that died before finishing: (re)do it.
        db.execute("INSERT OR REPLACE INTO runs VALUES (?, 'claimed', ?, datetime('now'))", (run_id, epoch))
        return True

    def _set_done(self, db: sqlite3.Connection, run_id: str, epoch: int) -> None:
        db.execute("INSERT OR REPLACE INTO runs VALUES (?, 'done', ?, datetime('now'))", (run_id, epoch))
        db.execute("DELETE FROM runs WHERE updated < datetime('now', ?)", (f"-{self.KEEP_DAYS} days",))

    def _transaction(self, work: Callable[..., T], *args: Any) -> T:
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, state TEXT NOT NULL,"
                " epoch INTEGER NOT NULL, updated TEXT NOT NULL)"
            )
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db, *args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result


def parse_lock_file(text: str) -> Holder | None:
    """Read the holder written by ``FileLock._take``; None for an empty or foreign file."""
    first, _, rest = text.partition("\n")
    if not first.strip().isdigit():
        return None
    fields = dict(line.split("=", 1) for line in rest.splitlines() if "=" in line)
    epoch = fields.get("epoch", "0")
    return Holder(
        pid=int(first),
        host=fields.get("host", ""),
        since=fields.get("since", ""),
        epoch=int(epoch) if epoch.isdigit() else 0,
    )


async def _flock_in_thread(fd: int) -> None:
    """Wait for the exclusive lock on ``fd`` in a thread, without polling.

    A thread blocked in flock() cannot be interrupted, so when the waiting task is cancelled (the
    worker shuts down) the thread is left to finish on its own: whichever side comes second, the
    thread after locking or the task after cancellation, closes ``fd``, which drops any lock taken.
    A daemon thread never delays the process exit.
    """
    loop = asyncio.get_running_loop()
    locked: asyncio.Future[None] = loop.create_future()
    guard = threading.Lock()
    state = {"abandoned": False, "finished": False}

    def report(error: OSError | None) -> None:
        if not locked.done():
            if error is None:
                locked.set_result(None)
            else:
                locked.set_exception(LockError(f"flock() failed while waiting: {error.strerror}"))

    def wait() -> None:
        error = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            error = exc
        with guard:
            state["finished"] = True
            if not state["abandoned"]:
                try:
                    loop.call_soon_threadsafe(report, error)
                    return
                except RuntimeError:  # the event loop is already closed
                    pass
            os.close(fd)

    threading.Thread(target=wait, name="primary-lock-wait", daemon=True).start()
    try:
        await locked
    except BaseException:
        with guard:
            state["abandoned"] = True
            if state["finished"]:
                os.close(fd)
        raise
