"""Settings: every one documented, every bad value reported in one line that names it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.config import ConfigError, Settings, load_settings

from conftest import PROJECT

VARIABLES = sorted(name.upper() for name in Settings.model_fields)


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
    ("LOCK_RETRY_SECONDS", "0", "invalid setting LOCK_RETRY_SECONDS='0': Input should be greater than 0"),
    ("LOCK_PATH", "primary.lock", "invalid setting LOCK_PATH='primary.lock': must be an absolute path"),
    ("REDIS_URL", "redis://:pw@host:port", "invalid setting REDIS_URL=<hidden>: must be a redis://"),
    ("LOCK_KEY_PREFIX", "", "invalid setting LOCK_KEY_PREFIX='': String should have at least 1 character"),
    ("REPORT_SCHEDULE", "daily", "invalid setting REPORT_SCHEDULE='daily': must have 5 crontab fields"),
    ("REPORT_SCHEDULE", "0 7 * * 1", "invalid setting REPORT_SCHEDULE='0 7 * * 1': write the weekday field"),
    (
        "REPORT_SCHEDULE",
        "0 25 * * *",
        "invalid setting REPORT_SCHEDULE='0 25 * * *': is not a valid schedule",
    ),
    ("REPORT_TIMEZONE", "Mars/Olympus", "invalid setting REPORT_TIMEZONE='Mars/Olympus': must be an IANA"),
    ("REPORT_RECIPIENTS", "ops", "invalid setting REPORT_RECIPIENTS='ops': 'ops' is not an e-mail address"),
    (
        "EMAIL_BACKEND",
        "pigeon",
        "invalid setting EMAIL_BACKEND='pigeon': Input should be 'console' or 'smtp'",
    ),
    ("SMTP_TLS", "yes", "invalid setting SMTP_TLS='yes': Input should be 'none', 'starttls' or 'tls'"),
]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [case for case in BAD_VALUES if case[0].lower() in Settings.model_fields],  # this backend's
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env file
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith(expected)
    assert "\n" not in str(error.value)
