"""The primary lock as a kernel file lock: ``flock(2)`` on ``LOCK_PATH``.

Why flock: the kernel drops the lock the instant the holding process dies, even after ``kill -9``, so
there is never a stale lock to clean up, and a worker blocked in ``flock()`` wakes up at that instant.
That is what makes failover take milliseconds.

Four rules keep it to exactly one holder, whatever other accounts on the host do:

* **A private directory.** The lock file and the run ledger live in the directory of ``LOCK_PATH``,
  which must belong to the service's user (or root) and be writable by nobody else; the service
  creates it with mode 0700 when it is missing. In a world-writable directory such as ``/tmp`` itself,
  another account could create the files first and hold the lock forever, or plant a ledger that
  suppresses or multiplies the reports.
* **Checked files.** Every file is opened with ``O_NOFOLLOW`` (a symbolic link is refused) and
  ``O_CLOEXEC`` (no child process inherits the lock), created with mode 0600, and must be a regular
  file of the service's user that nobody else can write. A file at ``LOCK_PATH`` that is not a lock
  file of this service (a ``config.ini`` named by mistake) is refused, never truncated.
* **Never unlinked**, not even on release: otherwise two processes could lock two different inodes
  under the same name and both believe they are primary.
* **Verified.** After every acquisition, and about once a second while primary, the holder checks that
  the path still names the inode it locked, because someone may delete or replace the file by hand.

Every step that opens a descriptor closes it again on any failure, so a failed write (a full disk)
never leaves a worker holding the kernel lock without knowing it.

The file's content is for humans: the holder's PID on the first line (``cat LOCK_PATH`` prints it),
then its host, since when it holds the lock, and the epoch (a counter of acquisitions).

This module is everything the file backend owns: its settings, its lock, its run ledger, and the
private scope of the demo.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import sqlite3
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, field_validator

from .base import STARTUP_JOB_PREFIX, Claim, Holder, LockError
from .process import boot_id, is_running, pid_namespace

if TYPE_CHECKING:
    from ..config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")

PACKAGE = __name__.partition(".")[0]
LOCK_PATH_EXAMPLE = f"/tmp/{PACKAGE}/primary.lock"
ALTERNATIVE_EXAMPLE = f"/run/{PACKAGE}/primary.lock"
"""Suggested when the default directory is the one taken (with systemd: RuntimeDirectory=)."""


class BackendSettings(BaseModel):
    """The file backend's settings (``config.Settings`` inherits them)."""

    lock_path: Path = Path({{ cookiecutter.lock_path | tojson }})
    """The lock file every worker (and every container sharing the volume) competes for. Its
    directory must belong to the service's user and be writable by nobody else; the service creates
    it (mode 0700) when missing."""
    lock_retry_seconds: float = Field(default=1.0, ge=0.05, le=60)
    """How often standbys retry after a lock error (the delay doubles up to 10 s)."""

    @field_validator("lock_path")
    @classmethod
    def _lock_path(cls, path: Path) -> Path:
        # A relative path would name a different file for workers started in different directories.
        if not path.is_absolute():
            raise ValueError(f"must be an absolute path, e.g. {LOCK_PATH_EXAMPLE}")
        if ".." in path.parts or path.name in ("", "..", "."):
            raise ValueError(f"must name a file without '..' segments, e.g. {LOCK_PATH_EXAMPLE}")
        if len(path.name.encode()) > 200:  # the ledger beside it is named <name>.runs.sqlite3-journal
            raise ValueError("must have a file name of at most 200 bytes")
        return path

    def backend_secrets(self) -> list[str]:
        return []  # a path holds no secret


SECRET_SETTINGS: set[str] = set()
"""Settings of this backend whose value may hold a password (none)."""


def make_lock(settings: BackendSettings) -> FileLock:
    return FileLock(settings.lock_path)


VERIFY_INTERVAL_SECONDS = 1.0
"""How often the primary checks that the lock file at LOCK_PATH is still the one it holds."""
MAX_LOCK_FILE_BYTES = 4096
"""A lock file of this service is a few short lines; anything longer is some other file."""
MAX_EPOCH = 2**62
"""Epochs above this are not ours (a tampered file): SQLite's integers end at 2**63 - 1."""
UNNAMED_HOLDER_PATIENCE_SECONDS = 0.5
"""How long ``read_holder`` waits for a new holder to write its details before calling it nameless."""

# Every descriptor this module opens on a lock file, and every lock object. A child forked without
# exec (a process pool under gunicorn, say) inherits the descriptors, and with them the kernel lock:
# it would keep the lock after the primary died, and nobody could take over. So the child closes
# them first thing, and its copies of the lock objects forget they held anything.
_LOCK_DESCRIPTORS: set[int] = set()
_LOCKS: weakref.WeakSet[FileLock] = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    for fd in _LOCK_DESCRIPTORS:
        with suppress(OSError):
            os.close(fd)
    _LOCK_DESCRIPTORS.clear()
    for lock in list(_LOCKS):
        lock._fd, lock._holder = None, None


os.register_at_fork(after_in_child=_forget_locks_in_child)


def _close(fd: int) -> None:
    """Close a descriptor of a lock file (dropping any lock it holds)."""
    _LOCK_DESCRIPTORS.discard(fd)
    os.close(fd)


class FileLock:
    """The primary lock of every worker (and container) that shares one lock file."""

    backend = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = f"lock file {path}"
        self.epoch = 0
        self._fd: int | None = None
        self._holder: Holder | None = None
        _LOCKS.add(self)

    async def try_acquire(self) -> bool:
        fd = self._open()
        with _closed_on_failure(fd, self.path):
            locked = self._flock_nowait(fd)
        if not locked:
            _close(fd)
            return False
        return await self._take(fd)

    async def acquire(self) -> None:
        while True:
            fd = self._open()
            await _flock_in_thread(fd, self.path)  # closes fd itself if waiting fails or is cancelled
            if await self._take(fd):
                return

    async def hold(self) -> None:
        while self._fd is not None:
            await asyncio.sleep(VERIFY_INTERVAL_SECONDS)
            if not self.verify():
                await self._relock_after_tampering()

    def is_held(self) -> bool:
        return self._fd is not None

    def takeover_delay(self) -> float:
        return 0.0  # the kernel never grants a lock that another process still holds

    def verify(self) -> bool:
        """Held, and LOCK_PATH still names the locked file (checked before every ledger claim)."""
        if self._fd is None:
            return False
        try:
            return self._names_locked_file(self._fd)
        except OSError:
            return False  # cannot even look (the directory was made unreadable): not verified

    def run_ledger(self) -> FileRunLedger:
        return FileRunLedger(self)

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._holder = self._fd, None, None
            _close(fd)  # closing the descriptor drops the flock; the file itself stays

    async def read_holder(self) -> Holder | None:
        if self._holder is not None:
            return self._holder
        check_trusted_directory(self.path.parent, purpose=f"the lock file {self.path}")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LockError(f"cannot read the lock file {self.path}: {exc.strerror}") from exc
        _LOCK_DESCRIPTORS.add(fd)  # a fork while it holds the shared lock must not keep it
        try:
            waited = 0.0
            while True:
                # A shared lock is granted only while nobody holds the exclusive one. The probe is
                # dropped by closing fd below and never delays a waiting worker by more than that.
                if self._flock_nowait(fd, shared=True):
                    return None
                text = os.pread(fd, MAX_LOCK_FILE_BYTES, 0).decode(errors="replace")
                if (holder := parse_lock_file(text)) is not None:
                    self._check_holder_runs(holder, text)
                    return holder
                if waited >= UNNAMED_HOLDER_PATIENCE_SECONDS:  # not a holder that is still writing
                    raise LockError(
                        f"a process holds the lock file {self.path} but the file names no holder "
                        "(it is empty or not a lock file of this service); find the process with "
                        f"`fuser -v {self.path}`"
                    )
                await asyncio.sleep(0.05)
                waited += 0.05
        finally:
            _close(fd)

    async def close(self) -> None:
        await self.release()

    # -- the details -------------------------------------------------------------------------

    def _open(self) -> int:
        """Open (creating if needed) the lock file in its private directory; errors say how to fix."""
        ensure_private_directory(self.path.parent, purpose=f"the lock file {self.path}")
        fd = open_private_file(self.path, what="lock file")
        _LOCK_DESCRIPTORS.add(fd)
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

    def _check_holder_runs(self, holder: Holder, text: str) -> None:
        """A lock held in the name of a process that provably does not run means that a process it
        started holds the lock (forked without closing it): say so, rather than name the dead one."""
        fields = lock_file_fields(text)
        here = fields.get("boot") == boot_id() != "" and fields.get("pidns") == pid_namespace() != ""
        if here and not is_running(holder.pid):
            raise LockError(
                f"the lock file {self.path} names pid {holder.pid} as the primary, which is not "
                f"running, yet the lock is held: a process it started still holds it; find it "
                f"with `fuser -v {self.path}` and stop it"
            )

    async def _take(self, fd: int) -> bool:
        """Adopt a freshly locked descriptor as the primary lock (closing it if that fails).

        False if the file is no longer at the path (deleted or replaced meanwhile: worthless);
        LockError if it is not a lock file of this service, or if the holder's details cannot be
        written (a full disk): the kernel lock is dropped with the descriptor in both cases.

        The epoch continues from the lock file's. A lock file without one (the first start, or one
        replaced by hand) continues from the highest epoch in the run ledger, so that a successor
        still outranks the claims of a holder deposed by the replacement.
        """
        with _closed_on_failure(fd, self.path):
            if not self._names_locked_file(fd):
                _close(fd)
                return False
            size = os.fstat(fd).st_size
            text = os.pread(fd, MAX_LOCK_FILE_BYTES, 0).decode(errors="replace")
            previous = parse_lock_file(text)
            if size and (previous is None or size > MAX_LOCK_FILE_BYTES):
                raise LockError(
                    f"LOCK_PATH {self.path} names a file that is not a lock file of this service "
                    "(it is left untouched); set LOCK_PATH to a new file, e.g. in a directory of its own"
                )
            latest = previous.epoch if previous else await self.run_ledger().highest_epoch()
            epoch = max(self.epoch, latest) + 1
            holder = Holder.me(epoch)
            content = (
                f"{holder.pid}\nhost={holder.host}\nsince={holder.since}\nepoch={epoch}\n"
                f"boot={boot_id()}\npidns={pid_namespace()}\n"
            ).encode()
            try:
                # Overwrite, then cut: the file never looks empty to a reader, only old or new.
                os.pwrite(fd, content, 0)
                os.ftruncate(fd, len(content))
            except OSError as exc:
                raise LockError(
                    f"cannot write the lock file {self.path}: {exc.strerror}; free space on its file "
                    "system, or set LOCK_PATH to another location"
                ) from exc
        self.epoch, self._holder, self._fd = epoch, holder, fd
        return True

    async def _relock_after_tampering(self) -> None:
        """The lock file was deleted or replaced: lock the file now at the path, or give up the lock."""
        old_fd, self._fd, self._holder = self._fd, None, None
        try:
            os.stat(self.path, follow_symlinks=False)
            logger.warning("Lock file %s was deleted or replaced by hand; re-locking it", self.path)
        except FileNotFoundError:
            logger.warning("Lock file %s was deleted by hand; locking a new one", self.path)
        except OSError as exc:
            logger.warning("Cannot check the lock file %s (%s); stepping down", self.path, exc.strerror)
        try:
            fd = self._open()
            with _closed_on_failure(fd, self.path):
                locked = self._flock_nowait(fd)
            if not locked:
                _close(fd)
                logger.warning("Another worker holds the new lock file %s; stepping down", self.path)
            elif not await self._take(fd):
                logger.warning("Lock file %s changed again while re-locking; stepping down", self.path)
        finally:
            if old_fd is not None:
                _close(old_fd)


class FileRunLedger:
    """The run ledger of the file backend: a small SQLite database beside the lock file.

    Each claim is one SQLite transaction (``BEGIN IMMEDIATE`` takes SQLite's own write lock), so even
    two processes that both believe they are primary, in the second after someone replaced the lock
    file by hand, cannot both claim one period. Rows older than ``KEEP_DAYS`` are pruned, except the
    latest of each job and the runs of start-up tasks. The file follows the lock file's rules:
    private directory, no symbolic link, the service's own, mode 0600.
    """

    KEEP_DAYS = 30

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock
        self.path = lock.path.with_name(f"{lock.path.name}.runs.sqlite3")

    async def claim(self, job: str, period: str) -> Claim:
        if not self.lock.verify():
            return "fenced"  # only the holder of the file now at LOCK_PATH may claim
        return await self._run(self._claim, job, period, self.lock.epoch)

    async def finish(self, job: str, period: str) -> None:
        await self._run(self._set_done, job, period, self.lock.epoch)

    async def abandon(self, job: str, period: str) -> None:
        sql = "DELETE FROM runs WHERE job = ? AND period = ? AND state = 'claimed' AND epoch = ?"
        await self._run(lambda db: db.execute(sql, (job, period, self.lock.epoch)))

    async def last_done(self, job: str) -> str | None:
        sql = "SELECT max(period) FROM runs WHERE job = ? AND state = 'done'"
        row = await self._run(lambda db: db.execute(sql, (job,)).fetchone())
        return str(row[0]) if row and row[0] is not None else None

    async def is_done(self, job: str, period: str) -> bool:
        sql = "SELECT 1 FROM runs WHERE job = ? AND period = ? AND state = 'done'"
        return await self._run(lambda db: db.execute(sql, (job, period)).fetchone()) is not None

    async def highest_epoch(self) -> int:
        """The highest epoch of any claim, or 0 (also when the ledger cannot be read: it then fails
        loudly at the first claim)."""
        try:
            row = await self._run(
                lambda db: db.execute("SELECT coalesce(max(epoch), 0) FROM runs").fetchone()
            )
        except LockError:
            return 0
        return int(row[0])

    async def created_at(self) -> float:
        sql = "SELECT value FROM meta WHERE key = 'created'"
        row = await self._run(lambda db: db.execute(sql).fetchone())
        return float(row[0])

    @staticmethod
    def _claim(db: sqlite3.Connection, job: str, period: str, epoch: int) -> Claim:
        row = db.execute(
            "SELECT state, epoch FROM runs WHERE job = ? AND period = ?", (job, period)
        ).fetchone()
        if row is not None and row[0] == "done":
            return "done"
        if row is not None and row[1] > epoch:
            return "fenced"  # claimed by a newer primary: this one is deposed
        # New; or claimed by an earlier primary that died before finishing; or by this primary,
        # which could not finish it (a failure whose give-back failed too): (re)do it.
        db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, 'claimed', ?, datetime('now'))", (job, period, epoch)
        )
        return "claimed"

    def _set_done(self, db: sqlite3.Connection, job: str, period: str, epoch: int) -> None:
        db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, 'done', ?, datetime('now'))", (job, period, epoch)
        )
        if job.startswith(STARTUP_JOB_PREFIX):
            return  # start-up tasks are kept: forgetting one would run it again
        # Old runs of this job only, and only those before this period: the job's latest run is
        # always kept (a monthly job's last month, even when it is more than KEEP_DAYS old), or
        # that period would be run again. Found through the index on (job, updated).
        db.execute(
            "DELETE FROM runs WHERE job = ? AND updated < datetime('now', ?) AND period < ?",
            (job, f"-{self.KEEP_DAYS} days", period),
        )

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._transaction, work, *args)

    def _transaction(self, work: Callable[..., T], *args: Any) -> T:
        ensure_private_directory(self.path.parent, purpose=f"the run ledger {self.path}")
        os.close(open_private_file(self.path, what="run ledger"))  # create it 0600, or refuse it
        try:
            with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS runs (job TEXT NOT NULL, period TEXT NOT NULL,"
                        " state TEXT NOT NULL, epoch INTEGER NOT NULL, updated TEXT NOT NULL,"
                        " PRIMARY KEY (job, period))"
                    )
                    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    # Added later: a ledger created before gets it built on its first use.
                    db.execute("CREATE INDEX IF NOT EXISTS runs_by_age ON runs (job, updated)")
                    db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
                    result = work(db, *args)
                except BaseException:
                    if db.in_transaction:  # SQLite may have rolled back already (a full disk)
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result
        except (sqlite3.Error, OverflowError) as exc:
            hint = ""
            if "unable to open" in str(exc) or "disk I/O" in str(exc):
                hint = f"; check that {self.path.parent} is writable and has free space and inodes"
            raise LockError(f"the run ledger {self.path} cannot be used: {exc}{hint}") from exc


def check_trusted_directory(directory: Path, *, purpose: str) -> None:
    """Refuse ``directory`` unless only this service (or root) can change what it contains.

    The directory itself must be a real directory of the service's user or root that nobody else
    can write. Every directory above it (and any symbolic link on the way) must belong to root or the
    service's user and be writable by nobody else, or be root's and sticky like ``/tmp``: otherwise
    another account could rename the service's directory away and put its own in its place.
    """
    uid, problem = os.geteuid(), _ancestor_problem(directory)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        info = None  # nothing there yet: nobody can have planted anything in it
    except OSError as exc:
        raise LockError(f"cannot check the directory {directory} of {purpose}: {exc.strerror}") from exc
    if problem is None and info is not None:
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            problem = f"{directory} is a symbolic link or not a directory"
        elif info.st_uid not in (uid, 0):
            problem = f"{directory} belongs to uid {info.st_uid}, not to this service's uid {uid} (or root)"
        elif info.st_mode & 0o022:
            problem = f"{directory} is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        example = ALTERNATIVE_EXAMPLE if directory == Path(LOCK_PATH_EXAMPLE).parent else LOCK_PATH_EXAMPLE
        raise LockError(
            f"the directory of {purpose} is not the service's own: {problem}, so another account could "
            f"plant or hold the files the service keeps there; set LOCK_PATH to a file in a directory "
            f"of the service's own, e.g. {example} (created with mode 0700 when missing)"
        )


def _ancestor_problem(directory: Path) -> str | None:
    """What is wrong with the directories above ``directory`` (as written and as resolved), if anything."""
    uid = os.geteuid()
    resolved = Path(os.path.realpath(directory.parent))
    for ancestor in dict.fromkeys([*directory.parents, resolved, *resolved.parents]):
        try:
            info = os.lstat(ancestor)
        except OSError:
            continue  # not there (yet), or not visible: creating or opening below reports it
        sticky_of_root = info.st_uid == 0 and info.st_mode & stat.S_ISVTX
        if info.st_uid not in (uid, 0):
            return f"{ancestor}, above it, belongs to uid {info.st_uid}"
        if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022 and not sticky_of_root:
            return f"{ancestor}, above it, is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def ensure_private_directory(directory: Path, *, purpose: str) -> None:
    """Create ``directory`` (mode 0700) if missing, and refuse it unless only this service can write it."""
    if _ancestor_problem(directory) is None:  # never create anything in a tree others control
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LockError(
                f"cannot create the directory {directory} for {purpose}: {exc.strerror}; make its parent "
                f"writable for uid {os.geteuid()}, or set LOCK_PATH to a writable location"
            ) from exc
    check_trusted_directory(directory, purpose=purpose)


def open_private_file(path: Path, *, what: str) -> int:
    """Open ``path`` read-write (created 0600), refusing links, other files and other owners' files."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(
                f"the {what} {path} is a symbolic link, which is refused because it could point "
                "anywhere; remove the link, or set LOCK_PATH to another path"
            ) from exc
        owner = ""
        with suppress(OSError):
            if exc.errno in (errno.EACCES, errno.EPERM) and (uid := os.lstat(path).st_uid) != os.geteuid():
                owner = f" (it belongs to uid {uid}: remove it, the service creates its own)"
        raise LockError(
            f"cannot open the {what} {path}: {exc.strerror}{owner}; make {path.parent} writable for uid "
            f"{os.geteuid()}, or set LOCK_PATH to a writable location"
        ) from exc
    with _closed_on_failure(fd, path):
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file; remove it, or set LOCK_PATH to another path"
        elif info.st_uid != os.geteuid():
            problem = (
                f"belongs to uid {info.st_uid}, not to this service's uid {os.geteuid()}, and a process "
                "of that account could hold or rewrite it; remove it, or set LOCK_PATH to a directory "
                f"only this service can write (e.g. {LOCK_PATH_EXAMPLE})"
            )
        elif info.st_mode & 0o022:
            problem = (
                f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); remove it (the "
                f"service creates it again with mode 600), or run `chmod 600 {path}`"
            )
        if problem:
            raise LockError(f"the {what} {path} {problem}")
    return fd


@contextmanager
def _closed_on_failure(fd: int, path: Path) -> Iterator[None]:
    """Close ``fd`` if the block raises anything: a descriptor of a failed step must never linger,
    least of all one that holds the kernel lock. An ``OSError`` becomes a ``LockError``."""
    try:
        yield
    except OSError as exc:
        _close(fd)
        raise LockError(f"cannot use {path}: {exc.strerror}; check the file and its file system") from exc
    except BaseException:
        _close(fd)
        raise


def lock_file_fields(text: str) -> dict[str, str]:
    """The ``key=value`` lines of a lock file; the first occurrence of a key counts (while a new
    holder overwrites a longer old content, the tail of the old one may follow for an instant)."""
    fields: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        key, sep, value = line.partition("=")
        if sep:
            fields.setdefault(key, value)
    return fields


def parse_lock_file(text: str) -> Holder | None:
    """Read the holder written by ``FileLock._take``; None for an empty or foreign file."""
    first = text.partition("\n")[0].strip()
    fields = lock_file_fields(text)
    epoch = fields.get("epoch", "")
    if not (_is_number(first) and _is_number(epoch) and int(epoch) <= MAX_EPOCH):
        return None
    host, since = fields.get("host", ""), fields.get("since", "")
    return Holder(pid=int(first), host=host, since=since, epoch=int(epoch))


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 19  # "²".isdigit() is True, too


async def _flock_in_thread(fd: int, path: Path) -> None:
    """Wait for the exclusive lock on ``fd`` in a thread, without polling.

    A thread blocked in flock() cannot be interrupted, so when the waiting task is cancelled (the
    worker shuts down) the thread is left to finish on its own: whichever side comes second, the
    thread after locking or the task after cancellation, closes ``fd``, which drops any lock taken.
    If waiting fails, ``fd`` is closed as well. A daemon thread never delays the process exit.
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
                locked.set_exception(
                    LockError(
                        f"flock() failed on {path} while waiting: {error.strerror}; put LOCK_PATH on "
                        "a local file system that supports file locks"
                    )
                )

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
            _close(fd)

    threading.Thread(target=wait, name="primary-lock-wait", daemon=True).start()
    try:
        await locked
    except BaseException:
        with guard:
            state["abandoned"] = True
            if state["finished"]:
                _close(fd)
        raise


@asynccontextmanager
async def demo_scope(settings: Settings) -> AsyncIterator[Settings]:
    """Settings for ``python -m ... demo``: a lock file of its own in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="election-demo-") as scratch:
        yield settings.model_copy(update={"lock_path": Path(scratch) / "demo.lock"})
