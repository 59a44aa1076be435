"""Mutation testing of the generated service's coordination and notification code.

Slow (an hour or more for the whole scope), so it is not part of ``.ci/run``. From the template root::

    .venv/bin/python mutation/run.py                      # every target, both backends
    .venv/bin/python mutation/run.py --list               # the mutants, without running anything
    .venv/bin/python mutation/run.py --target lease --target redis_lua --sample 20 --seed 1
    .venv/bin/python mutation/run.py --only redis_lua:3   # one mutant (ids as printed by --list)

What it does, for each target (a module of the generated package, on one lock backend):

1. bakes the template with cookiecutter (``lock_backend=<backend>``) into a temporary directory;
2. runs the target's tests there once unmutated: they must pass (their time sets the per-mutant
   timeout: ``--timeout-factor`` x that time + 30 s);
3. for each mutant: rewrites the baked source file *in place* (the tests start real uvicorn and
   gunicorn workers that import the package from ``src/``, so a mutant must be in the file they
   import), runs the target's tests with ``-x`` in a process group of its own (killed as a whole at
   the timeout), and restores the file. ``PYTHONDONTWRITEBYTECODE=1`` and an emptied ``__pycache__``
   make sure no stale byte code of another mutant is ever imported.

A mutant is *killed* when the tests fail, *timed out* when they hang past the timeout (also a
detection: a real hang would be seen), *survived* when they pass. The report (``--out``, markdown, and
``--json``) lists every survivor with its diff; docs/mutation.md publishes the latest verdicts.

Mutants of Python code are made from the AST of the listed functions only (no log call, no message
text, no docstring), one change each, written back over the node's exact source span:

* comparisons: ``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``is``/``is not``, ``in``/``not in``;
* ``and``/``or``; ``not x`` -> ``x``; ``+``/``-``, ``*``/``/``; ``min``/``max``;
* numbers: an int ``n`` -> ``n + 1``, a float ``x`` -> ``2 * x`` (``0.0`` -> ``1.0``); ``True``/``False``;
* the condition of an ``if``/``while``/conditional expression -> ``True`` and -> ``False``;
* a statement (assignment, call, ``return``, ``raise``, ``continue``) -> ``pass``.

Mutants of the Redis backend's Lua scripts are written by hand (``LUA_MUTANTS``): each names the
script, the text to replace in it and the replacement.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
PACKAGE = "my_service"  # the default cookiecutter answers: project my-service, package my_service


@dataclass
class Target:
    name: str
    backend: str
    module: str  # path below src/<package>/
    functions: list[str]  # qualified names (Class.method) whose bodies are mutated
    tests: list[str]  # pytest node ids or files, fast ones first (-x stops at the first failure)
    focus: bool = False  # fencing, self-demotion, takeover wait, ledger: the goal is no survivor


REDIS_IN_PROCESS = [
    "tests/test_redis_lock.py::test_release_and_renewal_check_the_token",
    "tests/test_redis_lock.py::test_a_gracefully_released_or_expired_lease_is_taken_over_without_waiting",
    "tests/test_redis_lock.py::test_a_holder_that_stops_or_dies_while_waiting_passes_its_wait_on",
    "tests/test_redis_lock.py::test_a_primary_notices_a_lost_lease_within_half_a_second",
    "tests/test_redis_lock.py::test_no_renewal_runs_past_the_deadline_whatever_the_socket_timeout",
    "tests/test_redis_lock.py::test_the_one_shot_api_holds_the_lease_through_its_takeover_wait",
    "tests/test_redis_lock.py::test_the_renewals_carry_on_after_the_takeover_wait",
    "tests/test_redis_lock.py::test_cancelling_a_renewing_primary_always_stops_it",
    "tests/test_redis_lock.py::test_keys_garbled_by_hand_are_repaired_not_obeyed_for_ever",
]
# Left out: test_lease_backend.py::test_paused_primary_is_not_replaced_before_its_lease_runs_out_and_
# steps_down_on_resume (test_redis_lock.py's test_paused_primary_steps_down_on_resume_... until it moved
# there, shared by the lease backends) failed unmutated
# on a loaded machine (a tick of the resumed worker logged after the successor's promotion).
REDIS_SERVERS = [
    "tests/test_election.py",
    "tests/test_redis_lock.py::test_a_lease_that_vanishes_under_a_live_primary_never_makes_two_primaries",
]
LEASE_TESTS = [
    "tests/test_lease_rules.py",
    "tests/test_run_ledger.py",
    "tests/test_holding.py",
    *REDIS_IN_PROCESS,
    *REDIS_SERVERS,
]
LEDGER_TESTS = ["tests/test_run_ledger.py", "tests/test_ledger_fencing.py", *REDIS_IN_PROCESS, *REDIS_SERVERS]
FILE_LOCK_TESTS = [
    "tests/test_run_ledger.py",
    "tests/test_ledger_fencing.py",
    "tests/test_holding.py",
    "tests/test_election.py",
    "tests/test_file_lock.py",
    "tests/test_workers.py::test_standby_takes_over_after_kill_9_before_any_restart",
]
ELECTION_TESTS = [
    "tests/test_election.py",
    "tests/test_holding.py",
    "tests/test_run_ledger.py",
    "tests/test_workers.py",
]
NOTIFICATION_TESTS = [
    "tests/test_run_ledger.py",
    "tests/test_notifications.py",
]
JOB_TESTS = [
    "tests/test_run_ledger.py",
    "tests/test_jobs.py",
    "tests/test_notifications.py",
]

TARGETS = [
    Target("redis_lua", "redis", "coordination/redis_lock.py", [], LEDGER_TESTS, focus=True),
    Target(
        "lease",
        "redis",
        "coordination/lease.py",
        [
            "safety_margin",
            "belief_window",
            "LeaseLock.__init__",
            "LeaseLock.try_acquire",
            "LeaseLock.takeover_delay",
            "LeaseLock.acquire",
            "LeaseLock.hold",
            "LeaseLock.is_held",
            "LeaseLock.release",
        ],
        LEASE_TESTS,
        focus=True,
    ),
    Target(
        "redis_lock",
        "redis",
        "coordination/redis_lock.py",
        [
            "RedisLock._acquire_lease",
            "RedisLock._renew_lease",
            "RedisLock._release_lease",
            "RedisLock._record",
            "RedisRunLedger.claim",
            "RedisRunLedger.finish",
            "RedisRunLedger.abandon",
            "RedisRunLedger.last_done",
            "RedisRunLedger.is_done",
        ],
        LEDGER_TESTS,
        focus=True,
    ),
    Target(
        "file_lock",
        "file",
        "coordination/file_lock.py",
        [
            "FileLock.try_acquire",
            "FileLock.acquire",
            "FileLock.hold",
            "FileLock.is_held",
            "FileLock.verify",
            "FileLock.release",
            "FileLock._names_locked_file",
            "FileLock._take",
            "FileLock._relock_after_tampering",
            "FileRunLedger.claim",
            "FileRunLedger.finish",
            "FileRunLedger.abandon",
            "FileRunLedger.last_done",
            "FileRunLedger.is_done",
            "FileRunLedger.highest_epoch",
            "FileRunLedger._claim",
            "FileRunLedger._set_done",
        ],
        FILE_LOCK_TESTS,
        focus=True,
    ),
    Target(
        "election",
        "file",
        "coordination/election.py",
        [
            "Election.is_primary",
            "Election.start",
            "Election.retire",
            "Election.stop",
            "Election._campaign",
            "Election._promote",
            "Election._demote",
            "Election._lock_failed",
            "Election._lock_usable",
            "Election._retry_delay",
            "hold_through_takeover",
        ],
        ELECTION_TESTS,
    ),
    Target(
        "jobs",
        "file",
        "coordination/jobs.py",
        ["Schedule.fire_times", "Jobs._run_task", "Jobs.attempt", "JobRunner.run_due", "JobRunner.due_periods"],
        JOB_TESTS,
    ),
    Target(
        "alerts",
        "file",
        "notifications/alerts.py",
        ["AlertDigest.emit", "AlertDigest.send_digest", "AlertDigest._drain", "AlertDigest.compose"],
        NOTIFICATION_TESTS,
    ),
]

# (script, text in that script, replacement, what it breaks)
LUA_MUTANTS = [
    ("CLAIM", "redis.call('GET', KEYS[1]) ~= ARGV[1] or ", "", "claim: no token check (fence on epoch only)"),
    ("CLAIM", " or redis.call('GET', KEYS[2]) ~= ARGV[2]", "", "claim: no epoch check (fence on token only)"),
    (
        "CLAIM",
        "~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then",
        "~= ARGV[1] and redis.call('GET', KEYS[2]) ~= ARGV[2] then",
        "claim: token AND epoch must both differ to fence",
    ),
    (
        "CLAIM",
        "then\n  return 'fenced'\nend\nif redis.call('TYPE'",
        "then\nend\nif redis.call('TYPE'",
        "claim: no fence at all",
    ),
    ("CLAIM", "== 'done' then return 'done' end", "== 'done' then end", "claim: a done period is claimed again"),
    (
        "CLAIM",
        ") > tonumber(ARGV[2]) then",
        ") >= tonumber(ARGV[2]) then",
        "claim: a claim under our own epoch fences us",
    ),
    (
        "CLAIM",
        ") > tonumber(ARGV[2]) then",
        ") > tonumber(ARGV[2]) + 1e18 then",
        "claim: a claim under a newer epoch is taken over",
    ),
    ("CLAIM", "redis.call('EXPIRE', KEYS[3], ARGV[3])\n", "", "claim: the claim never expires"),
    ("FINISH", "'state', 'done'", "'state', 'claimed'", "finish: the period is not marked done"),
    (
        "FINISH",
        "if not latest or latest < ARGV[3] then",
        "if not latest or latest > ARGV[3] then",
        "finish: latest moves backwards",
    ),
    ("FINISH", "if not latest or latest < ARGV[3] then", "if not latest then", "finish: latest never moves on"),
    (
        "ABANDON",
        "\n    and redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then",
        " then",
        "abandon: gives back another epoch's claim",
    ),
    ("ABANDON", "== 'claimed'", "== 'done'", "abandon: gives back nothing (or a done period)"),
    (
        "CREATED",
        "redis.call('SET', KEYS[1], redis.call('TIME')[1])",
        "redis.call('SET', KEYS[1], 0)",
        "created_at: the ledger claims to be as old as 1970",
    ),
    ("ACQUIRE", "  return {0, '', 'lease-without-expiry'}\n", "", "acquire: a lease without expiry is taken over"),
    ("ACQUIRE", "    redis.call('PEXPIRE', KEYS[1], ARGV[2])\n", "", "acquire: a lease without expiry is not repaired"),
    (
        "ACQUIRE",
        "wait, why = math.max(0, active - now), 'inherited'",
        "wait, why = 0, 'inherited'",
        "acquire: a released lease's unfinished wait is not inherited",
    ),
    (
        "ACQUIRE",
        "math.max(0, expires - now, active - now), 'vanished'",
        "math.max(0, active - now), 'vanished'",
        "acquire: a vanished lease is not waited out",
    ),
    (
        "ACQUIRE",
        "math.max(0, expires - now, active - now), 'vanished'",
        "math.max(0, expires - now), 'vanished'",
        "acquire: a vanished holder's own unfinished wait is not passed on",
    ),
    (
        "ACQUIRE",
        "local wait, why, note = tonumber(ARGV[6]), 'unknown', ''",
        "local wait, why, note = 0, 'unknown', ''",
        "acquire: no wait without a record",
    ),
    ("ACQUIRE", "wait = math.min(wait, tonumber(ARGV[7]))", "wait = wait", "acquire: no cap on the wait"),
    ("ACQUIRE", "or '') or 0) + 1\n", "or '') or 0) + 0\n", "acquire: the epoch does not grow"),
    (
        "ACQUIRE",
        "math.max(stored or 0, tonumber(record_field(KEYS[3], 'epoch') or '') or 0)",
        "(stored or 0)",
        "acquire: the record's epoch is ignored (epoch key lost)",
    ),
    (
        "ACQUIRE",
        "'expires_ms', now + tonumber(ARGV[2]),",
        "'expires_ms', now,",
        "acquire: the record says the lease expires at once",
    ),
    (
        "ACQUIRE",
        "'active_ms', now + wait, 'state', 'held'",
        "'active_ms', now, 'state', 'held'",
        "acquire: the record forgets the wait",
    ),
    ("ACQUIRE", "if wait == 0 then why = 'none' end", "", "acquire: the reason of no wait is 'unknown'"),
    ("RENEW", "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end", "", "renew: no token check"),
    ("RENEW", "if stored and stored > epoch then return 0 end", "", "renew: a newer epoch does not depose"),
    (
        "RENEW",
        "if stored and stored > epoch then return 0 end",
        "if stored and stored >= epoch then return 0 end",
        "renew: our own epoch deposes us",
    ),
    ("RENEW", "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n", "", "renew: the lease is not extended"),
    (
        "RENEW",
        "if stored ~= epoch then redis.call('SET', KEYS[3], epoch) end",
        "",
        "renew: a lost epoch key is not restored",
    ),
    ("RENEW", "  redis.call('HSET', KEYS[2], 'expires_ms', expires)\n", "", "renew: the record's expiry does not move"),
    (
        "RENEW",
        "'expires_ms', expires, 'active_ms', 0, 'state', 'held')",
        "'expires_ms', 0, 'active_ms', 0, 'state', 'held')",
        "renew: a rewritten record says the lease expired",
    ),
    (
        "RELEASE",
        "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end",
        "",
        "release: no token check (deletes another's lease)",
    ),
    ("RELEASE", "  redis.call('HSET', KEYS[2], 'state', 'released')", "", "release: the record is not marked released"),
    ("RELEASE", "redis.call('PUBLISH', ARGV[2], ARGV[1])", "", "release: the standbys are not told"),
    (
        "PRELUDE",
        "math.floor(tonumber(clock[2]) / 1000)",
        "math.floor(tonumber(clock[2]))",
        "the clock's microseconds are counted as ms",
    ),
]


@dataclass
class Mutant:
    target: str
    index: int
    line: int
    description: str
    source: str  # the whole mutated module
    diff: str = ""
    status: str = "pending"
    seconds: float = 0.0
    output_tail: str = ""
    tests: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.target}:{self.index}"


# -- making mutants -------------------------------------------------------------------------------

SWAP_COMPARE = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult}


def _is_logging(node: ast.AST) -> bool:
    """A call of logger.*, logging.*, print or warnings: its text and arguments are not mutated."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "print"
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("logger", "logging", "warnings")
    )


def _functions(tree: ast.Module, names: list[str]) -> list[ast.AST]:
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[f"{node.name}.{item.name}"] = item
    missing = [name for name in names if name not in found]
    if missing:
        print(f"warning: not found (renamed?): {', '.join(missing)}", file=sys.stderr)
    return [found[name] for name in names if name in found]


def _offsets(source: bytes) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _replace(source: bytes, starts: list[int], node: ast.AST, text: str) -> str:
    """``source`` with the span of ``node`` replaced (AST columns count UTF-8 bytes)."""
    begin = starts[node.lineno - 1] + node.col_offset  # type: ignore[attr-defined]
    end = starts[node.end_lineno - 1] + node.end_col_offset  # type: ignore[attr-defined]
    return (source[:begin] + text.encode() + source[end:]).decode()


def _expression_mutants(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """(description, replacement node) for one expression node."""
    out: list[tuple[str, ast.AST]] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAP_COMPARE:
                new = copy.deepcopy(node)
                new.ops[i] = SWAP_COMPARE[type(op)]()
                out.append((f"{type(op).__name__} -> {type(new.ops[i]).__name__}", new))
    elif isinstance(node, ast.BoolOp):
        new = copy.deepcopy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append((f"{type(node.op).__name__} -> {type(new.op).__name__}", new))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("not x -> x", node.operand))
    elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
        new = copy.deepcopy(node)
        new.op = SWAP_BINOP[type(node.op)]()
        out.append((f"{type(node.op).__name__} -> {type(new.op).__name__}", new))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
        new = copy.deepcopy(node)
        new.func = ast.Name(id="max" if node.func.id == "min" else "min", ctx=ast.Load())
        out.append((f"{node.func.id} -> {new.func.id}", new))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str | bytes):
        value = node.value
        if isinstance(value, bool):
            out.append((f"{value} -> {not value}", ast.Constant(not value)))
        elif isinstance(value, int):
            out.append((f"{value} -> {value + 1}", ast.Constant(value + 1)))
        elif isinstance(value, float):
            changed = value * 2 if value else 1.0
            out.append((f"{value} -> {changed}", ast.Constant(changed)))
    return out


def python_mutants(target: Target, source: str) -> list[tuple[int, str, str]]:
    """(line, description, mutated module source) for every mutant of the target's functions."""
    tree = ast.parse(source)
    encoded = source.encode()
    starts = _offsets(encoded)
    skip: set[int] = set()  # ids of nodes inside logging calls, f-strings and docstrings
    mutants: list[tuple[int, str, str]] = []

    def add(node: ast.AST, description: str, text: str) -> None:
        mutated = _replace(encoded, starts, node, text)
        try:
            compile(mutated, target.module, "exec")
        except SyntaxError:
            return
        if mutated != source:
            mutants.append((node.lineno, description, mutated))  # type: ignore[attr-defined]

    for function in _functions(tree, target.functions):
        for node in ast.walk(function):
            if _is_logging(node) or isinstance(node, ast.JoinedStr):
                skip.update(id(child) for child in ast.walk(node))
            # the whole condition negated by dropping its `not`: covered by condition -> True/False
            if isinstance(node, ast.If | ast.While | ast.IfExp) and isinstance(node.test, ast.UnaryOp):
                skip.add(id(node.test))
        body = function.body  # type: ignore[attr-defined]
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.update(id(child) for child in ast.walk(body[0]))
        constructor = function.name == "__init__"  # type: ignore[attr-defined]
        if constructor:  # initial values (x = 0, x = None): only computed ones are mutated
            skip.update(
                id(n.value)
                for n in ast.walk(function)
                if isinstance(n, ast.Assign | ast.AnnAssign) and isinstance(n.value, ast.Constant | ast.Name)
            )
        for node in ast.walk(function):
            if id(node) in skip or node is function:
                continue
            if isinstance(node, ast.If | ast.While | ast.IfExp):
                for constant in (True, False):
                    add(node.test, f"condition -> {constant}", str(constant))
            if (
                not constructor
                and isinstance(
                    node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Expr | ast.Return | ast.Raise | ast.Continue
                )
                and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
            ):
                add(node, f"{type(node).__name__.lower()} statement -> pass", "pass")
            if isinstance(node, ast.expr):
                for description, replacement in _expression_mutants(node):
                    add(node, description, f"({ast.unparse(replacement)})")
    mutants.sort(key=lambda m: m[0])
    return mutants


def lua_mutants(source: str) -> list[tuple[int, str, str]]:
    mutants: list[tuple[int, str, str]] = []
    for script, old, new, description in LUA_MUTANTS:
        anchor = source.find(f"\n{script} = ")
        if anchor < 0:
            raise SystemExit(f"Lua mutant: no script {script} in redis_lock.py")
        end = source.find('"""\n', source.find('"""', anchor) + 3)
        at = source.find(old, anchor, end)
        if at < 0:
            raise SystemExit(f"Lua mutant of {script}: text not found (the script changed?): {old!r}")
        line = source.count("\n", 0, at) + 1
        mutants.append((line, f"Lua {script}: {description}", source[:at] + new + source[at + len(old) :]))
    return mutants


def unified_diff(before: str, after: str, name: str) -> str:
    import difflib

    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), name, name, n=0, lineterm="")
    return "\n".join(line for line in lines if not line.startswith(("---", "+++")))


# -- running ----------------------------------------------------------------------------------------


def bake(backend: str, into: Path) -> Path:
    subprocess.run(
        [str(VENV_BIN / "cookiecutter"), "--no-input", "-o", str(into), str(ROOT), f"lock_backend={backend}"],
        check=True,
        capture_output=True,
    )
    project = into / "my-service"
    for cache in project.rglob("__pycache__"):
        shutil.rmtree(cache)
    return project


def run_tests(project: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, output tail)."""
    existing = [t for t in tests if (project / t.partition("::")[0]).exists()]
    env = dict(os.environ)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(project / "src"),
        PYTHONDONTWRITEBYTECODE="1",
    )
    argv = [str(VENV_BIN / "python"), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--tb=line", *existing]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            argv, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout)
            status = {0: "passed", 1: "failed"}.get(code, "error")
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the servers and redis-servers it started
            process.wait()
        log.seek(0)
        tail = "\n".join(log.read().splitlines()[-12:])
    return status, time.monotonic() - started, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--target", action="append", help="a target name (repeat); default all")
    parser.add_argument("--only", action="append", help="a mutant id, target:index (repeat)")
    parser.add_argument("--sample", type=int, help="at most this many mutants per target, drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-factor", type=float, default=1.5)
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--show", help="print the diff of one mutant id and exit")
    parser.add_argument("--out", type=Path, default=Path("mutation-report.md"))
    parser.add_argument("--json", type=Path, default=Path("mutation-report.json"))
    parser.add_argument("--workdir", type=Path, help="bake here (default: a temporary directory)")
    args = parser.parse_args()

    targets = [t for t in TARGETS if not args.target or t.name in args.target]
    only = set(args.only or [])
    if only:
        targets = [t for t in targets if any(i.partition(":")[0] == t.name for i in only)]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mutation-"))
    projects: dict[str, Path] = {}
    results: list[Mutant] = []
    baselines: dict[str, float] = {}
    started = datetime.now(UTC)

    def project_for(backend: str) -> Path:
        if backend not in projects:
            shutil.rmtree(workdir / backend, ignore_errors=True)
            projects[backend] = bake(backend, workdir / backend)
        return projects[backend]

    try:
        for target in targets:
            project = project_for(target.backend)
            path = project / "src" / PACKAGE / target.module
            original = path.read_text()
            made = lua_mutants(original) if target.name == "redis_lua" else python_mutants(target, original)
            mutants = [Mutant(target.name, i, line, desc, src) for i, (line, desc, src) in enumerate(made)]
            generated = len(mutants)
            if only:
                mutants = [m for m in mutants if m.id in only]
            elif args.sample and len(mutants) > args.sample:
                mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: m.index)
            for mutant in mutants:
                mutant.diff = unified_diff(original, mutant.source, target.module)
            if args.show:
                for mutant in mutants:
                    if mutant.id == args.show:
                        print(mutant.description, f"(line {mutant.line})\n{mutant.diff}")
                continue
            if args.list:
                print(f"== {target.name} ({target.backend}, {target.module}): {generated} mutants")
                for mutant in mutants:
                    print(f"  {mutant.id:16} line {mutant.line:4}  {mutant.description}")
                continue
            status, seconds, tail = run_tests(project, target.tests, 1800)
            if status != "passed":
                print(f"!! {target.name}: the unmutated tests do not pass ({status}):\n{tail}", file=sys.stderr)
                return 2
            baselines[target.name] = seconds
            timeout = args.timeout_factor * seconds + 20
            print(
                f"== {target.name}: {len(mutants)} of {generated} mutants; tests take {seconds:.0f} s "
                f"unmutated, timeout {timeout:.0f} s",
                flush=True,
            )
            for mutant in mutants:
                path.write_text(mutant.source)
                try:
                    status, mutant.seconds, tail = run_tests(project, target.tests, timeout)
                finally:
                    path.write_text(original)
                mutant.status = {"failed": "killed", "passed": "survived", "timeout": "timeout"}.get(status, "error")
                if mutant.status != "killed":
                    mutant.output_tail = tail
                print(
                    f"  {mutant.id:16} {mutant.status:9} {mutant.seconds:5.0f} s  line {mutant.line}: "
                    f"{mutant.description}",
                    flush=True,
                )
                if mutant.status == "survived":
                    print("    " + mutant.diff.replace("\n", "\n    "), flush=True)
                results.append(mutant)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.list or args.show:
        return 0
    write_report(args, results, baselines, started)
    return 0


def write_report(
    args: argparse.Namespace, results: list[Mutant], baselines: dict[str, float], started: datetime
) -> None:
    lines = [
        f"# Mutation run of {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `{' '.join(sys.argv)}`",
        "",
        "| target | backend | run | killed | timed out | survived | error | tests unmutated |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in TARGETS:
        mine = [m for m in results if m.target == target.name]
        if not mine:
            continue
        count = {s: sum(m.status == s for m in mine) for s in ("killed", "timeout", "survived", "error")}
        lines.append(
            f"| {target.name} | {target.backend} | {len(mine)} | {count['killed']} | {count['timeout']} "
            f"| {count['survived']} | {count['error']} | {baselines.get(target.name, 0):.0f} s |"
        )
    lines += ["", "## Survivors and errors", ""]
    for mutant in results:
        if mutant.status in ("survived", "error"):
            lines += [
                f"### {mutant.id} ({mutant.status}), line {mutant.line}: {mutant.description}",
                "",
                "```diff",
                mutant.diff,
                "```",
                "",
            ]
    args.out.write_text("\n".join(lines) + "\n")
    args.json.write_text(json.dumps([{k: v for k, v in vars(m).items() if k != "source"} for m in results], indent=1))
    print(f"\nReport: {args.out} and {args.json}")


if __name__ == "__main__":
    sys.exit(main())
