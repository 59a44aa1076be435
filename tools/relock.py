"""Regenerate the uv.lock files the template ships: ``templates/locks/<backend>.lock``, one per lock backend.

Run it from the repository root after changing the dependencies of the generated ``pyproject.toml``
(or to move every pin to the newest release, with ``--upgrade``)::

    .venv/bin/python tools/relock.py [--upgrade]

For each backend in ``cookiecutter.json`` it bakes the template with the default answers, runs
``uv lock`` in the baked project and writes the lock back. The shipped lock is the starting point, so
without ``--upgrade`` a pin moves only when the dependencies demand it. A lock depends on the backend
only: the project supports every Python from 3.11 on, whatever ``python_version`` deploys, and the
project's name (its one mention in the lock) is written back as a template variable. The template
tests check that every baked combination passes ``uv lock --check``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter
from uv import find_uv_bin

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "templates" / "locks"
DEFAULT_SLUG = "my-service"
# The project's own entry, the only place its name appears in a lock.
PROJECT_ENTRY = '[[package]]\nname = "{name}"\nsource = {{ editable = "." }}\n'
JINJA_MARKERS = ("{{", "{%", "{#")


def relock(backend: str, *, upgrade: bool, scratch: Path) -> Path:
    """Bake ``backend`` with the default answers, lock it, and write templates/locks/<backend>.lock."""
    shipped = LOCKS / f"{backend}.lock"
    if not shipped.exists():
        shipped.write_text("")  # a new backend: the bake includes this file, then uv locks from scratch
    answers = {"lock_backend": backend}
    project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(scratch), extra_context=answers))
    baked_lock = project / "uv.lock"
    if not baked_lock.read_text().strip():
        baked_lock.unlink()
    command = [find_uv_bin(), "lock", "--python", sys.executable, *(["--upgrade"] if upgrade else [])]
    subprocess.run(command, cwd=project, check=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})

    text = baked_lock.read_text()
    entry = PROJECT_ENTRY.format(name=DEFAULT_SLUG)
    if text.count(entry) != 1:
        raise SystemExit(f"{backend}: expected the project's entry once in uv.lock:\n{entry}")
    if any(marker in text for marker in JINJA_MARKERS):
        raise SystemExit(f"{backend}: uv.lock contains Jinja syntax ({JINJA_MARKERS}); it cannot be shipped as is")
    shipped.write_text(text.replace(entry, PROJECT_ENTRY.format(name="{{ cookiecutter.project_slug }}")))
    return shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest allowed release")
    arguments = parser.parse_args()
    backends = json.loads((ROOT / "cookiecutter.json").read_text())["lock_backend"]
    LOCKS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="relock-") as scratch:
        for backend in backends:
            lock = relock(backend, upgrade=arguments.upgrade, scratch=Path(scratch) / backend)
            print(f"{lock.relative_to(ROOT)}: {lock.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
