"""The backend contract: what this suite asks of the lock backend the project was generated with.

Every backend has a module ``backend_<name>.py`` with the same names (its lock scopes, its server,
its bad settings, its faults); this module passes on those of this project's backend
({{ cookiecutter.lock_backend }}), and ``conftest.py`` loads it as a plugin so that pytest finds its fixtures.
"""

from backend_{{ cookiecutter.lock_backend }} import (
    BACKEND,
    BAD_SETTINGS,
    FAILS_OVER_AT_ONCE,
    backend_server,
    fresh_lock_env,
    lock_env,
    scope_footprint,
    take_over_behind_its_back,
    unusable_lock_env,
    vanish,
)

__all__ = [
    "BACKEND",
    "BAD_SETTINGS",
    "FAILS_OVER_AT_ONCE",
    "backend_server",
    "fresh_lock_env",
    "lock_env",
    "scope_footprint",
    "take_over_behind_its_back",
    "unusable_lock_env",
    "vanish",
]
