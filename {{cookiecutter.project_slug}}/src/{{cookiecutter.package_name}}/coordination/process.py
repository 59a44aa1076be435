"""Facts about processes on this machine: whether a pid runs, and which machine and pid namespace
"this machine" is, so that a pid written by another process is only ever looked up where it means
the same process (the same boot of the same kernel, the same pid namespace).
"""

from __future__ import annotations

import os
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
