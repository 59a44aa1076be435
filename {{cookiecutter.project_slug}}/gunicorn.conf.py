"""gunicorn settings: ``gunicorn -c gunicorn.conf.py {{ cookiecutter.package_name }}.api:app``.

Every worker runs the FastAPI lifespan, so every worker takes part in the primary election; one of
them runs the singleton services. ``preload_app = True`` would be fine too: the lock is taken in each
worker's lifespan, never at import time.
"""

import os

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WORKERS", "4"))
# uvicorn_worker is the maintained home of the Uvicorn worker (uvicorn.workers is deprecated).
worker_class = "uvicorn_worker.UvicornWorker"
# On SIGTERM or a reload (SIGHUP) workers finish their requests for up to this long; the primary
# then stops its services and releases the lock.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
timeout = 60
# No control socket (gunicorn >= 25 opens one per user by default): nothing here needs one.
control_socket_disable = True
