"""The benchmark harness behind ``bench/run.py`` (and, in part, ``bench/throughput.py``).

``project`` bakes the template and puts the baked tests' helpers on ``sys.path``; every other
module imports those helpers (``support``, ``conftest``, ``mail_sink``, ``backend_<name>``), so import
them only after ``project.bake_all()``.

* ``project``  baking, the bench's own apps, environments
* ``servers``  the uvicorn server under measurement (the generated tests' ``Server``, with read times)
* ``backends`` file, redis, postgres: their servers and lock scopes, side by side
* ``stats``    percentiles and Markdown tables
* ``failover`` kill -9 failover and graceful hand-over, per backend (and the baseline app)
* ``reloads``  HUP reloads, ours vs the baseline
* ``costs``    start-up, standby cost, httpx throughput, alert burst
* ``soak``     the chaos soak and its analysis
* ``report``   the tables printed at the end of a run
"""
