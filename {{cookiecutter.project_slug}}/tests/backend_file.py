"""What the backend contract suite needs from the file backend: its lock scopes and its faults.

Every backend has a module like this one (``backend_<name>.py``) with the same names; ``conftest.py``
takes them from the module of the backend this project was generated with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import Settings
from {{ cookiecutter.package_name }}.coordination import PrimaryLock, make_lock

BACKEND = "file"
FAILS_OVER_AT_ONCE = True
"""A standby takes over the moment the primary dies (the kernel drops its lock): the new primary is
always one of the workers that were already running."""
BAD_SETTINGS = [
    ("LOCK_PATH", "primary.lock", "invalid setting LOCK_PATH='primary.lock': must be an absolute path"),
    ("LOCK_PATH", "/tmp/../etc/x.lock", "invalid setting LOCK_PATH='/tmp/../etc/x.lock': must name a file"),
    ("LOCK_RETRY_SECONDS", "1e-9", "invalid setting LOCK_RETRY_SECONDS='1e-9': must be a number from 0.05"),
]
"""(variable, bad value, the start of the one line that refuses it) for each setting of the backend."""


@pytest.fixture(scope="session")
def backend_server() -> Iterator[None]:
    """The server the backend needs: none for a lock file."""
    yield None


@pytest.fixture
def lock_env(tmp_path: Path) -> dict[str, str]:
    """The lock scope of one test: a private lock file."""
    return {"LOCK_PATH": str(tmp_path / "scope" / "primary.lock")}


@pytest.fixture
def fresh_lock_env(lock_env: dict[str, str]) -> dict[str, str]:
    """A lock scope never used before (every lock file scope of a test is new)."""
    return lock_env


async def take_over_behind_its_back(settings: Settings) -> PrimaryLock:
    """Make a new lock the holder while the current holder still believes it holds the lock.

    Someone renames another file over LOCK_PATH (the holder's descriptor still locks the old inode,
    and it has not checked the path yet), and a second worker locks the new file.
    """
    path = settings.lock_path
    replacement = path.with_name("replacement.lock")
    replacement.touch(mode=0o600)
    replacement.rename(path)
    successor = make_lock(settings)
    assert await successor.try_acquire()
    return successor


def vanish(settings: Settings) -> None:
    """Take the lock away from its holder behind its back, with nobody in its place: the lock file
    is deleted by hand (the holder's descriptor now locks a file that is no longer at the path)."""
    Path(settings.lock_path).unlink()


def unusable_lock_env(tmp_path: Path) -> dict[str, str]:
    """A lock scope that cannot even be attempted: a symbolic link at LOCK_PATH."""
    link = tmp_path / "link.lock"
    link.symlink_to(tmp_path / "elsewhere.lock")
    return {"LOCK_PATH": str(link)}


def scope_footprint(lock_env: dict[str, str]) -> list[str]:
    """What exists of the lock scope of ``lock_env``: the files in the lock file's directory."""
    directory = Path(lock_env["LOCK_PATH"]).parent
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []
