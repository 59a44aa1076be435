"""Remove the files that belong to options not chosen.

Cookiecutter renders this file with Jinja, then runs it inside the generated project directory, after
``pre_gen_project.py`` has validated the answers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# JSON-encoded twice, so that no answer can become code (see pre_gen_project.py).
ANSWERS = json.loads({{ cookiecutter | tojson | tojson }})
PACKAGE = ANSWERS["package_name"]

# The files (and folders) only some lock backends need, relative to the project directory: one is
# removed unless the chosen backend lists it (the lease backends share their contract tests). When
# adding a backend, list its own files here (and an empty list for a backend that has none).
BACKEND_ONLY_FILES = {
    "file": [
        f"src/{PACKAGE}/coordination/file_lock.py",
        "tests/backend_file.py",
        "tests/test_file_lock.py",
        "tests/test_shared_volume.py",
    ],
    "redis": [
        f"src/{PACKAGE}/coordination/redis_lock.py",
        "tests/backend_redis.py",
        "tests/test_redis_lock.py",
        "tests/test_lease_backend.py",
    ],
    "postgres": [
        f"src/{PACKAGE}/coordination/postgres_lock.py",
        f"src/{PACKAGE}/database.py",
        f"src/{PACKAGE}/migrations",
        "tests/backend_postgres.py",
        "tests/test_migrations.py",
        "tests/test_postgres_lock.py",
        "tests/test_lease_backend.py",
    ],
}

ANSWERS_FILE = ".cookiecutter.json"
"""The answers of this bake, for `cookiecutter --replay-file` or `cruft` later. Only the template's
own variables are kept: cookiecutter's private entries (`_template`, `_output_dir`, ...) hold paths
of the machine that baked the project."""


def public_answers(answers: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in answers.items() if not key.startswith("_")}


if __name__ == "__main__":
    project = Path.cwd()
    chosen = set(BACKEND_ONLY_FILES.get(ANSWERS["lock_backend"], []))
    for paths in BACKEND_ONLY_FILES.values():
        for path in map(project.joinpath, set(paths) - chosen):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    replay = {"cookiecutter": public_answers(ANSWERS)}
    (project / ANSWERS_FILE).write_text(json.dumps(replay, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
