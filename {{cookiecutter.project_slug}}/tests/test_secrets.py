"""No secret in any output: logs (so no alert mail either), stderr, ``/health/worker`` and ``status``.

Each test hands the service a sentinel secret in one of the forms the settings accept, makes the
service talk about it (connection errors, a careless log line, a careless exception, a library's
line), and searches everything the service wrote or answered for the sentinel.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
{%- if cookiecutter.lock_backend == "redis" %}
from pathlib import Path
from urllib.parse import quote

import pytest
{%- endif %}

from conftest import PACKAGE, Server, service_env
{%- if cookiecutter.lock_backend == "redis" %}
from redis_server import RedisServer
{%- endif %}
from support import free_port

SENTINEL = "s3ntinel-Pa55#w0rd!"


def status_output(lock_env: dict[str, str], **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.coordination", "status"],
        env=service_env(lock_env, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        where = text.find(secret)
        assert where < 0, f"the secret {secret!r} was written: {text[max(0, where - 200) : where + 200]}"


def test_the_smtp_password_is_in_no_output(
    start_server: Callable[..., Server], lock_env: dict[str, str]
) -> None:
    env = {
        "EMAIL_BACKEND": "smtp",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(free_port()),  # nobody listens: every digest fails and says so
        "SMTP_USERNAME": "ops",
        "SMTP_PASSWORD": SENTINEL,
        "ALERT_RECIPIENTS": "oncall@example.com",
        "ALERT_DIGEST_SECONDS": "1",
    }
    server = start_server("uvicorn", workers=2, env=env, app="apps:noisy_app", extra=("--factory",))

    assert server.get("/leak").status_code == 200
    server.wait_for_log(r"Careless traceback")
    server.wait_for_log(r"alert digest of \d+ record\(s\) not sent")

    assert server.get(f"/no/such/page/{SENTINEL}").status_code == 404  # and into the access log
    output = server.output() + server.get("/health/worker").text + status_output(lock_env, **env)
    assert_no_secret(output, SENTINEL)
    assert "--- Logging error ---" not in output  # the access line was redacted, not broken
    assert "Careless log line: ***" in output and "careless exception: ***" in output
    assert "A library's careless line: ***" in output
{%- if cookiecutter.lock_backend == "redis" %}


def url_forms(port: int, socket: Path) -> dict[str, str]:
    """Every way REDIS_URL can carry the password (redis-py reads the user part and the query)."""
    return {
        "user-part": f"redis://:{quote(SENTINEL, safe='')}@127.0.0.1:{port}/0",
        "user-and-password": f"redis://default:{quote(SENTINEL, safe='')}@127.0.0.1:{port}/0",
        "query": f"redis://127.0.0.1:{port}/0?password={quote(SENTINEL, safe='')}",
        "unix-socket-query": f"unix://{socket}?db=0&password={quote(SENTINEL, safe='')}",
        # A password written where the user name goes: redis-py takes it for a user name (and Redis
        # refuses it), but it is a secret all the same.
        "password-as-user": f"redis://{quote(SENTINEL, safe='')}@127.0.0.1:{port}/0",
    }


SECRET_FORMS = [SENTINEL, quote(SENTINEL, safe="")]  # as typed, and percent-encoded in the URL


@pytest.mark.parametrize("form", ["user-part", "user-and-password", "query", "unix-socket-query"])
def test_the_redis_password_is_in_no_output_in_any_url_form(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path, form: str
) -> None:
    redis_server = RedisServer(tmp_path, password=SENTINEL, unix_socket=True)
    try:
        assert redis_server.socket is not None
        url = url_forms(redis_server.port, redis_server.socket)[form]
        env = {"REDIS_URL": url, "ALERT_RECIPIENTS": "oncall@example.com", "ALERT_DIGEST_SECONDS": "1"}
        server = start_server("uvicorn", workers=2, env=env, app="apps:noisy_app", extra=("--factory",))

        server.wait_for_primary()  # the form is accepted: the password reached Redis
        assert server.get("/leak").status_code == 200
        server.wait_for_log(r"Careless traceback")
        server.wait_for_log(r"E-mail \(console backend, not sent\)")  # the digest, written to the log
        holder_output = status_output(lock_env, REDIS_URL=url)
        assert "primary: pid=" in holder_output and "***" in holder_output

        redis_server.stop()  # now every worker reports the unreachable Redis, URL included
        server.wait_for_log(r"ERROR .*cannot reach Redis")
        output = server.output() + server.get("/health/worker").text + status_output(lock_env, REDIS_URL=url)
        assert_no_secret(output + holder_output, *SECRET_FORMS)
        assert "Careless log line: ***" in output
    finally:
        redis_server.stop()


def test_a_password_written_as_the_user_name_is_not_shown(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path, password=SENTINEL, unix_socket=True)
    try:
        assert redis_server.socket is not None
        url = url_forms(redis_server.port, redis_server.socket)["password-as-user"]
        server = start_server("uvicorn", workers=2, env={"REDIS_URL": url})
        line = server.wait_for_log(r"ERROR .*Primary lock unavailable")
        assert "redis://***@127.0.0.1" in line
        output = server.output() + server.get("/health/worker").text + status_output(lock_env, REDIS_URL=url)
        assert_no_secret(output, *SECRET_FORMS)
    finally:
        redis_server.stop()


def test_a_wrong_redis_password_keeps_every_worker_standby_and_is_not_shown(
    start_server: Callable[..., Server], lock_env: dict[str, str], tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path, password="the-right-one")
    try:
        url = f"redis://:{quote(SENTINEL, safe='')}@127.0.0.1:{redis_server.port}/0"
        server = start_server("uvicorn", workers=2, env={"REDIS_URL": url})

        line = server.wait_for_log(r"ERROR .*Primary lock unavailable.*Redis refused the credentials")
        assert "redis://:***@127.0.0.1" in line
        assert server.primaries() == set()
        answer = server.get("/health/worker").json()
        assert answer["role"] == "standby" and answer["lock_error"]
        output = server.output() + str(answer) + status_output(lock_env, REDIS_URL=url)
        assert_no_secret(output, *SECRET_FORMS)
    finally:
        redis_server.stop()


def test_a_bad_redis_url_is_refused_without_showing_it(lock_env: dict[str, str]) -> None:
    url = f"http://:{SENTINEL}@127.0.0.1:6379/0"
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE],
        env=service_env(lock_env, REDIS_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3 and "invalid setting REDIS_URL=<hidden>" in result.stderr
    assert_no_secret(result.stdout + result.stderr, *SECRET_FORMS)
{%- endif %}
