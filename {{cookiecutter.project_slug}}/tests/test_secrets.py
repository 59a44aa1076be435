"""No secret in any output: logs (so no alert mail either), stderr, ``/health/worker`` and ``status``.

The backend's own secrets (a password in REDIS_URL or DATABASE_URL) are tested in its test module,
with the same sentinel and checks.

Each test hands the service a sentinel secret in one of the forms the settings accept, makes the
service talk about it (connection errors, a careless log line, a careless exception, a library's
line), and searches everything the service wrote or answered for the sentinel.
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import Server, status_output
from support import SENTINEL, assert_no_secret, free_port


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
