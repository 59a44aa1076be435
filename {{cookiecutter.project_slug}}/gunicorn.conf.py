"""gunicorn settings: ``gunicorn -c gunicorn.conf.py {{ cookiecutter.package_name }}.api:app``.

Every worker runs the FastAPI lifespan, so every worker takes part in the primary election; one of
them runs the singleton services. ``preload_app = True`` would be fine too: the lock is taken in each
worker's lifespan, never at import time.

The service's settings are read and checked here, in gunicorn's master, before any worker starts: a
bad one ends gunicorn with its one-line message and exit status 3, as the launcher does. gunicorn
binds ``BIND`` if set, else ``HOST:PORT``, and starts ``WORKERS`` workers.
"""

import os
import sys

from {{ cookiecutter.package_name }}.config import ConfigError, load_settings

try:
    settings = load_settings()
    graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
    if not 1 <= graceful_timeout <= 3600:
        raise ConfigError(f"invalid setting GRACEFUL_TIMEOUT={graceful_timeout!r}: must be from 1 to 3600")
except (ConfigError, ValueError) as exc:
    message = str(exc) if isinstance(exc, ConfigError) else "invalid setting GRACEFUL_TIMEOUT: not a number"
    print(f"ERROR: {message}", file=sys.stderr)
    sys.exit(3)

bind = os.environ.get("BIND", f"{settings.host}:{settings.port}")
workers = settings.workers
# uvicorn_worker is the maintained home of the Uvicorn worker (uvicorn.workers is deprecated).
worker_class = "uvicorn_worker.UvicornWorker"
# On SIGTERM or a reload (SIGHUP) workers finish their requests for up to graceful_timeout seconds
# (GRACEFUL_TIMEOUT, default 30); the primary then stops its services and releases the lock.
timeout = 60
# No control socket (gunicorn >= 25 opens one per user by default): nothing here needs one.
control_socket_disable = True
