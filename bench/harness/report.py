"""The tables printed at the end of a run (Markdown, ready for docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from .stats import fmt, table

CRASH_TARGET_MS = 4000.0  # ttl 3 s + retry 1 s
HANDOVER_TARGET_MS = 50.0  # p95


def print_failover(f: dict[str, Any]) -> str:
    rows = []
    for name in ("file", "redis", "postgres", "baseline"):
        if name not in f:
            continue
        r = f[name]
        target = "-" if name in ("file", "baseline") else ("yes" if (r["max"] or 1e9) <= CRASH_TARGET_MS else "NO")
        rows.append([name, r["trials"], r["none"], r["p50"], r["p95"], r["max"], target])
    text = table(
        "Crash failover (ms, kill -9 of the primary worker -> successor's promotion line read)",
        ["backend", "trials", "none", "p50", "p95", "max", "max <= ttl + retry (4000 ms)"],
        rows,
    )
    if "ratio_p50_file_over_baseline" in f:
        print(f"ratio p50 file/baseline: {fmt(f['ratio_p50_file_over_baseline'], 4)}")
    return text


def print_handover(h: dict[str, Any]) -> str:
    rows = []
    for name, variants in h.items():
        for variant, r in variants.items():
            s, rel = r["from_sigterm"], r["from_release"]
            met = "yes" if rel["p95"] is not None and rel["p95"] <= HANDOVER_TARGET_MS and not rel["none"] else "NO"
            rows.append(
                [
                    name,
                    variant,
                    s["trials"],
                    s["none"],
                    s["p50"],
                    s["p95"],
                    s["max"],
                    rel["p50"],
                    rel["p95"],
                    rel["max"],
                    met,
                ]
            )
    text = table(
        "Graceful hand-over (ms; worker: SIGTERM to the primary worker; server: SIGTERM to its server's master, "
        "a second server takes over)",
        [
            "backend",
            "stopped",
            "trials",
            "none",
            "SIGTERM p50",
            "SIGTERM p95",
            "SIGTERM max",
            "release p50",
            "release p95",
            "release max",
            "release p95 <= 50 ms",
        ],
        rows,
    )
    for name, variants in h.items():
        stuck = variants["worker"]["stuck"]
        if stuck:
            print(f"{name}: primary still alive 10 s after SIGTERM in {len(stuck)} trials: {stuck}")
    return text


def print_crash(c: dict[str, Any]) -> str:
    rows = [
        [backend, case, r["p50"], r["p95"], r["max"], r["none"], r["trials"]]
        for backend, cases in c.items()
        if isinstance(cases, dict)
        for case, r in cases.items()
    ]
    return table(
        "Crash of the server holding the primary, default ttl (ms, kill -9 of its process group -> the "
        "other server's promotion line read)",
        ["backend", "dead holder", "p50", "p95", "max", "none", "trials"],
        rows,
    )


def print_default(res: dict[str, Any]) -> list[str]:
    out = []
    if "failover" in res:
        out.append(print_failover(res["failover"]))
    if "crash" in res:
        out.append(print_crash(res["crash"]))
    if "handover" in res:
        out.append(print_handover(res["handover"]))
    if "reloads" in res:
        rows = []
        for variant, r in res["reloads"].items():
            for who in ("ours_file", "baseline"):
                c = r[who]
                rows.append([variant, who, r["trials"], c.get("primary", 0), c.get("none", 0), c.get("two", 0)])
        out.append(
            table(
                "HUP reloads: outcome once complete (+3 s)",
                ["variant", "server", "trials", "primary", "NO primary", "two"],
                rows,
            )
        )
    if "throughput" in res:
        t = res["throughput"]
        rows = [
            [k, ", ".join(f"{v:.0f}" for v in t["runs_req_per_s"][k]), t["median"][k]] for k in ("ours_file", "plain")
        ]
        out.append(
            table("Throughput GET /health (httpx, req/s, 32 concurrent, 4 workers)", ["app", "runs", "median"], rows)
        )
    if "startup" in res:
        s = res["startup"]
        out.append(
            table(
                "Start to first primary (ms, a new lock scope each time)",
                ["backend", "n", "p50", "max"],
                [[b, v["n"], v["p50"], v["max"]] for b, v in s.items()],
            )
        )
    if "standby_cost" in res:
        rows = [
            [
                k,
                v["requests_per_s_total"],
                v["requests_per_s_per_worker"],
                ", ".join(f"{c:.2f}" for c in v["standby_cpu_percent"]),
            ]
            for k, v in res["standby_cost"].items()
        ]
        out.append(
            table(
                "Lease backends at rest (4 workers)",
                ["backend and ttl", "server requests/s, all", "per worker", "standby CPU %"],
                rows,
            )
        )
    if "alert_burst" in res:
        a = res["alert_burst"]
        rows = [
            [k, a[f"{k}_ms"]["n"], a[f"{k}_ms"]["p50"], a[f"{k}_ms"]["p99"], a[f"{k}_ms"]["max"]]
            for k in ("quiet", "burst")
        ]
        out.append(
            table(
                "GET /health latency (ms) without / with a 1,000-error burst",
                ["window", "requests", "p50", "p99", "max"],
                rows,
            )
        )
        print(f"digest mails received: {a['digest_mails_received']}, bursts: {a['bursts']}")
    return out


def print_soak(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["backend"] + (" (appendonly)" if r.get("redis_appendonly") else ""),
            f"{r['minutes']:g} min",
            sum(r["fault_counts"].values()),
            r["periods_expected"],
            r["reports_delivered"],
            len(r["duplicates"]),
            len(r["missed"]),
            r["overlap_s"],
            r["time_without_primary_s"],
            r["longest_gap_s"],
        ]
        for r in results
    ]
    text = table(
        "Chaos soak (targets: 0 duplicates, 0 missed, 0 overlap)",
        [
            "backend",
            "length",
            "faults",
            "periods expected",
            "reports delivered",
            "duplicates",
            "missed",
            "overlap (s)",
            "no primary (s)",
            "longest gap (s)",
        ],
        rows,
    )
    text += "\n" + print_user_job(results)
    for r in results:
        print(
            f"{r['backend']}: faults {r['fault_counts']}; missed {r['missed']}; duplicates {r['duplicates']}; "
            f"overlaps {r['overlaps']}; tracebacks in logs {r['tracebacks_in_logs']}"
        )
    if results:
        print("Note: " + results[0]["note"])
    return text


def print_user_job(results: list[dict[str, Any]]) -> str:
    """The soak's user job (every second) and slow start-up task against readiness."""
    rows = []
    for r in results:
        u = r["user_job"]
        rows.append(
            [
                r["backend"] + (" (appendonly)" if r.get("redis_appendonly") else ""),
                u["job_runs"],
                u["job_periods_expected"],
                len(u["job_duplicate_periods"]),
                len(u["job_missed_periods"]),
                f"{u['startup_starts']} / {u['startup_finishes']}",
                u["ready_polls"],
                u["ready_workers_seen_200"],
                u["ready_200_before_finish"],
                u["ready_first_200_after_finish_min_ms"],
                u["ready_all_waiting_workers_200_after_finish_ms"],
            ]
        )
    text = table(
        "User job every second and a 2.5 s start-up task in the soak (targets: 0 duplicates, 0 missed, "
        "never ready before the task is done)",
        [
            "backend",
            "job runs",
            "periods expected",
            "duplicate periods",
            "missed in catch-up window",
            "start-up task starts / finishes",
            "/health/ready answers",
            "workers seen ready",
            "200 before the task finished",
            "first 200 after the finish (ms)",
            "every waiting worker 200 (ms)",
        ],
        rows,
    )
    for r in results:
        u = r["user_job"]
        print(
            f"{r['backend']} user job: missed {u['job_missed_periods']}; duplicates {u['job_duplicate_periods']}; "
            f"runs late > 2 s {u['job_runs_late_over_2s']} (max {u['job_max_lateness_s']}); start-up kill "
            f"{u['startup_kill']}; start-up records {[(s['event'], s['pid'], round(s['t'], 2)) for s in u['startup_records']]}; "
            f"not 200 when asked after the finish {u['ready_not_200_sent_after_finish']}; ready, then not "
            f"{u['ready_again_not_200']}; poll failures {u['ready_poll_failures']}"
        )
    return text
