"""Two containers on one host, simulated without Docker: each server runs in its own mount namespace
(``unshare --mount``) where a host directory is bind-mounted at ``/tmp``, as a Docker volume would be.

Sharing one directory, they elect one primary between them; with a directory each (the classic
mistake: no shared volume) each elects its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PACKAGE, PROJECT, Server, service_env, uvicorn_argv
from support import free_port, wait_until

CONTAINER_LOCK_PATH = f"/tmp/{PACKAGE}/primary.lock"  # as docker-compose.yml sets it in every container


def unshare_works() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "needs root and unshare(1) to create mount namespaces"
    if Path(sys.executable).resolve().is_relative_to("/tmp") or Path(sys.executable).is_relative_to("/tmp"):
        return "the Python interpreter lives under /tmp, which the simulated volume hides"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    return None if probe.returncode == 0 else "unshare --mount is not permitted here"


pytestmark = pytest.mark.skipif(bool(unshare_works()), reason=unshare_works() or "")


@pytest.fixture
def containers() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.stop()
        print(f"--- container on port {server.port} ---\n{server.output()}")


# In the new mount namespace: bind the volume at /tmp. If the project itself lies under /tmp (as in
# pytest's temporary directories), first bind it at the same path inside the volume (the mount is
# private to the namespace; the host only sees an empty directory), so the server still finds it.
MOUNT_VOLUME_AT_TMP = """
mount --make-rprivate /
case "$PROJECT" in /tmp/*)
    mkdir -p "$VOLUME${PROJECT#/tmp}" && mount --bind "$PROJECT" "$VOLUME${PROJECT#/tmp}";;
esac
mount --rbind "$VOLUME" /tmp && exec "$@"
"""


def start_container(volume: Path, servers: list[Server]) -> Server:
    """A server with two workers whose /tmp is ``volume``."""
    port = free_port()
    argv = ["unshare", "--mount", "sh", "-ec", MOUNT_VOLUME_AT_TMP, "sh", *uvicorn_argv(port, 2)]
    env = service_env({"LOCK_PATH": CONTAINER_LOCK_PATH}, VOLUME=str(volume), PROJECT=str(PROJECT))
    server = Server(argv, env, port, workers=2)
    servers.append(server)
    server.wait_until_started()
    return server


def test_containers_sharing_a_volume_elect_one_primary(tmp_path: Path, containers: list[Server]) -> None:
    volume = tmp_path / "shared-volume"
    volume.mkdir(mode=0o1777)
    first, second = start_container(volume, containers), start_container(volume, containers)

    both = wait_until(
        lambda: (p := first.primaries() | second.primaries()) and len(p) == 1 and p, "one primary"
    )

    lock_file = volume / PACKAGE / "primary.lock"
    assert lock_file.read_text().splitlines()[0] == str(next(iter(both)))
    assert (volume / PACKAGE).stat().st_mode & 0o777 == 0o700  # created private by the first container
    assert first.get("/health/worker").json()["holder"] == second.get("/health/worker").json()["holder"]


def test_containers_without_a_shared_volume_each_elect_their_own(
    tmp_path: Path, containers: list[Server]
) -> None:
    first_volume, second_volume = tmp_path / "volume-1", tmp_path / "volume-2"
    first_volume.mkdir()
    second_volume.mkdir()
    first = start_container(first_volume, containers)
    second = start_container(second_volume, containers)

    first.wait_for_primary()
    second.wait_for_primary()  # two primaries on one host: every report would go out twice
    assert (first_volume / PACKAGE / "primary.lock").exists()
    assert (second_volume / PACKAGE / "primary.lock").exists()
