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
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)
    return state != "Z"
