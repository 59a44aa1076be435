"""The lock backend this project was generated with ({{ cookiecutter.lock_backend }}), chosen here and nowhere else.

The rest of the service never asks which backend it has: it uses what this module passes on. Each
backend is one module of this package (``file_lock.py``, ``redis_lock.py``, ``postgres_lock.py``)
that owns its settings, its lock, its run ledger and the demo's private scope.
"""

from .{{ cookiecutter.lock_backend }}_lock import SECRET_SETTINGS, BackendSettings, demo_scope, make_lock

__all__ = ["SECRET_SETTINGS", "BackendSettings", "demo_scope", "make_lock"]
