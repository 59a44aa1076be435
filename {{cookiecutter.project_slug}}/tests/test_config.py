"""Settings: every one documented, every one refusing a bad value in one line that names it and says
what it accepts, every number bounded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import (
    ConfigError,
    Settings,
    allowed_range,
    load_settings,
)

from conftest import PROJECT
from contract import BAD_SETTINGS

VARIABLES = sorted(name.upper() for name in Settings.model_fields)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test sets: no .env file in the working directory, no settings from the environment."""
    monkeypatch.chdir(tmp_path)
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def test_every_setting_is_in_env_example_and_the_readme() -> None:
    example = (PROJECT / ".env.example").read_text()
    readme = (PROJECT / "README.md").read_text()
    assert set(re.findall(r"^([A-Z_]+)=", example, re.MULTILINE)) == set(VARIABLES)
    for variable in VARIABLES:
        assert f"| `{variable}` |" in readme, f"{variable} is missing from the README's settings table"


def test_env_example_holds_valid_defaults() -> None:
    settings = Settings(_env_file=PROJECT / ".env.example")
    assert settings == Settings(_env_file=None)


BAD_VALUES = [
    ("HOST", "", "invalid setting HOST='': String should have at least 1 character"),
    ("PORT", "http", "invalid setting PORT='http': must be a whole number from 1 to 65535"),
    ("WORKERS", "0", "invalid setting WORKERS='0': must be a whole number from 1 to 256"),
    ("LOG_LEVEL", "LOUD", "invalid setting LOG_LEVEL='LOUD': Input should be 'DEBUG', 'INFO', 'WARNING'"),
    ("LOG_FORMAT", "xml", "invalid setting LOG_FORMAT='xml': Input should be 'text' or 'json'"),
    ("EMAIL_BACKEND", "pigeon", "invalid setting EMAIL_BACKEND='pigeon': Input should be 'console' or"),
    ("EMAIL_FROM", "me", "invalid setting EMAIL_FROM='me': 'me' is not an e-mail address"),
    ("SMTP_HOST", "", "invalid setting SMTP_HOST='': String should have at least 1 character"),
    ("SMTP_PORT", "0", "invalid setting SMTP_PORT='0': must be a whole number from 1 to 65535"),
    ("SMTP_TLS", "yes", "invalid setting SMTP_TLS='yes': Input should be 'auto', 'none', 'starttls' or"),
    ("SMTP_TIMEOUT_SECONDS", "inf", "invalid setting SMTP_TIMEOUT_SECONDS='inf': must be a number from 1"),
    ("REPORT_SCHEDULE", "daily", "invalid setting REPORT_SCHEDULE='daily': must have 5 crontab fields"),
    ("REPORT_SCHEDULE", "0 7 * * 1", "invalid setting REPORT_SCHEDULE='0 7 * * 1': write the weekday field"),
    ("REPORT_SCHEDULE", "0 25 * * *", "invalid setting REPORT_SCHEDULE='0 25 * * *': is not a valid"),
    ("REPORT_TIMEZONE", "Mars/Olympus", "invalid setting REPORT_TIMEZONE='Mars/Olympus': must be an IANA"),
    ("REPORT_RECIPIENTS", "ops", "invalid setting REPORT_RECIPIENTS='ops': 'ops' is not an e-mail address"),
    ("REPORT_CATCH_UP_SECONDS", "1e11", "invalid setting REPORT_CATCH_UP_SECONDS='1e11': must be a number"),
    ("ALERT_RECIPIENTS", "a@b, c", "invalid setting ALERT_RECIPIENTS='a@b, c': 'c' is not an e-mail address"),
    ("ALERT_DIGEST_SECONDS", "1e-9", "invalid setting ALERT_DIGEST_SECONDS='1e-9': must be a number from 1"),
    ("ALERT_MAX_PER_HOUR", "0", "invalid setting ALERT_MAX_PER_HOUR='0': must be a whole number from 1"),
]
ANY_VALUE_IS_FINE = {"SMTP_USERNAME": "any text; empty for none", "SMTP_PASSWORD": "any text"}
CASES = [*BAD_VALUES, *BAD_SETTINGS]  # the service's, then the lock backend's own


def test_every_setting_has_a_bad_value_case() -> None:
    """A new setting must come with a case here (or a reason why no value of it can be wrong)."""
    covered = {variable for variable, _, _ in CASES} | set(ANY_VALUE_IS_FINE)
    assert set(VARIABLES) - covered == set()


@pytest.mark.parametrize(("variable", "value", "expected"), CASES)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)


NUMBERS = [name for name in Settings.model_fields if allowed_range(name)]


@pytest.mark.parametrize("name", NUMBERS)
def test_every_number_is_bounded_and_refuses_inf_and_nan(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    expected = allowed_range(name)
    assert expected is not None and " from " in expected, f"{name.upper()} has no range: {expected}"
    low, high = (float(bound) for bound in expected.rsplit(" from ", 1)[1].split(" to "))
    for bad in ["inf", "-inf", "nan", repr(low - 1), repr(high * 10 + 1)]:
        monkeypatch.setenv(name.upper(), bad)
        with pytest.raises(ConfigError, match=re.escape(f"{name.upper()}={bad!r}: must be {expected}")):
            load_settings()
    for good in [low, high]:
        value = str(int(good)) if good == int(good) else str(good)
        monkeypatch.setenv(name.upper(), value)
        # A retry must fit into the lease twice (redis): keep the other one out of the way.
        if name == "lock_retry_seconds":
            monkeypatch.setenv("LOCK_TTL_SECONDS", "300")
        if name == "lock_ttl_seconds":
            monkeypatch.setenv("LOCK_RETRY_SECONDS", "0.05")
        assert float(getattr(load_settings(), name)) == good


def test_an_smtp_password_is_refused_without_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    monkeypatch.setenv("SMTP_TLS", "none")
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith("invalid setting SMTP_TLS='none': must not be none while SMTP_")
    assert "secret" not in str(error.value)
    monkeypatch.setenv("SMTP_TLS", "auto")
    assert load_settings().smtp_tls == "auto"
