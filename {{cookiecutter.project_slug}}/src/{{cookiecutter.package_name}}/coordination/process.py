"""Facts about processes on this machine: whether a pid runs, and which machine and pid namespace
"this machine" is, so that a pid written by another process is only ever looked up where it means
the same process (the same boot of the same kernel, the same pid namespace).

It also holds the one proof that lets a lease backend fail over at once after a crash
(``ProcessId``, ``examine``): a lease holder writes who it is; a standby that provably shares its
view of pids can prove that this very process is gone, and a process that is gone cannot act.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@cache
def boot_id() -> str:
    """The kernel's id of this boot ("" where there is none): a pid of another boot means nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@cache
def pid_namespace() -> str:
    """The pid namespace of this process ("" if unknown): each container usually has its own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@cache
def time_namespace() -> str:
    """The time namespace of this process: it shifts the start times that ``/proc`` shows.

    "-" on a kernel without time namespaces (nothing shifts them), "" if unknown."""
    try:
        return os.readlink("/proc/self/ns/time")
    except FileNotFoundError:
        return "-" if pid_namespace() else ""
    except OSError:
        return ""


def this_view() -> str:
    """Who sees pids and start times as this process does ("" if that cannot be told).

    Two processes that show the same view see the same numbers for the same process: the same boot
    of the same kernel, the same pid namespace, the same time namespace (which shifts start times),
    and a ``/proc`` that belongs to that pid namespace (``/proc/self`` names our own pid). A namespace's
    number is only reused once it is gone, so while both processes live, the same numbers mean the
    same namespace.
    """
    try:
        own_proc = os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        own_proc = False
    parts = [boot_id(), pid_namespace(), time_namespace()]
    if not own_proc or not all(parts):
        return ""
    return ",".join("".join(c for c in part if c.isalnum() or c == "-") for part in parts)


@dataclass(frozen=True)
class ProcessId:
    """One process, named so that a process of the same view (``this_view``) can tell whether it is
    gone: its view, its pid there, and when it started (a pid alone may be reused by another process)."""

    view: str
    pid: int
    start: str

    @classmethod
    def me(cls) -> ProcessId:
        return cls(view=this_view(), pid=os.getpid(), start=start_time(os.getpid()))

    def encode(self) -> str:
        return f"{self.view}/{self.pid}/{self.start}"

    @classmethod
    def decode(cls, text: str) -> ProcessId | None:
        """The process that ``encode`` described, or None for anything else (an older holder)."""
        parts = text.split("/")
        if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts[1:]):
            return None
        return cls(view=parts[0], pid=int(parts[1]), start=parts[2])

    def seen_alike(self) -> bool:
        """Whether this process shares our view, so that its pid and start time mean the same here."""
        return self.view == this_view() != "" and self.pid > 0 and self.start != ""


@dataclass
class Examination:
    """What ``examine`` found out about a process."""

    gone: bool
    """It provably does not run any more: it cannot act."""
    exit_fd: int | None = None
    """Not proven gone: a descriptor (a pidfd) that surely refers to it and turns readable when it
    exits, to wait on without polling; the caller closes it."""


def examine(process: ProcessId) -> Examination:
    """Whether ``process``, of our view, provably no longer runs; never a guess.

    If it still ran, it would be the process with its pid here (the same pid namespace) and its
    start time (the same time namespace). So it is gone if no process has that pid, or the process
    with that pid started at another time (the pid was reused), or a pidfd opened on that pid turns
    readable (every thread of that process has exited). A pidfd opened *before* the start time is
    read, and not yet readable after, surely refers to the process whose start time was read.

    Not proof, so it is "not gone": a process of another view (another host, boot, or container), a
    paused (SIGSTOP) process, one whose main thread exited while other threads run (``/proc`` shows
    it as a zombie, yet it can act), anything that cannot be read. A true zombie (every thread
    exited, not yet reaped by its parent) cannot act: its pidfd is readable, so it counts as gone.
    """
    if not process.seen_alike() or process.pid == os.getpid():
        return Examination(gone=False)
    try:
        fd: int | None = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return Examination(gone=True)  # no process has its pid
    except (OSError, AttributeError):
        fd = None  # no pidfds (a kernel before 5.3, a seccomp filter): /proc alone
    try:
        started = start_time(process.pid)
        if fd is not None and _readable(fd):
            return Examination(gone=True)
        if started and started != process.start:
            return Examination(gone=True)  # its pid is another process's now
        if fd is None and not started and _no_such_process(process.pid):
            return Examination(gone=True)
        if fd is None or started != process.start:
            return Examination(gone=False)  # alive, or cannot be told
        fd, exit_fd = None, fd
        return Examination(gone=False, exit_fd=exit_fd)
    finally:
        if fd is not None:
            os.close(fd)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def _no_such_process(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a process of this pid namespace that has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # (a "pid" too large to be one)
        return False
    except PermissionError:
        return True  # it exists, but belongs to another user
    fields = _stat_fields(pid)
    if fields is None:  # it exited (and was reaped) since kill(0); or there is no /proc: trust kill(0)
        return not Path("/proc/self/stat").exists()
    return fields[0] != "Z"


def start_time(pid: int) -> str:
    """When ``pid`` started, in clock ticks since boot ("" if unknown): with the pid it names one
    process, where a pid alone may have been reused by another."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` from the third (the state) on, or None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
