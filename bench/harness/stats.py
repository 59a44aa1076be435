"""Percentiles, summaries and the Markdown tables the bench prints."""

from __future__ import annotations

from typing import Any


def pct(values: list[float], q: float) -> float | None:
    """Percentile by nearest rank (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
    }


def trials_summary(values: list[float | None]) -> dict[str, Any]:
    """Summary of trials where None means "no result within the deadline"."""
    done = [v for v in values if v is not None]
    return {**summary(done), "none": len(values) - len(done), "trials": len(values), "values_ms": values}


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    """Print and return a Markdown table under a ``###`` title."""
    cells = [header] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [f"\n### {title}\n", "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells[1:]]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
