"""Results of ``walswitch compare``: medians over runs, the ``rich`` tables, the JSON document.

``summarize(runs)`` turns the N results of one system into one: numbers are
medians, sequences and per-file counts are the first run's (all runs are kept
in the JSON), violations are every run's, each prefixed with its run number.

``tables(doc)`` gives two tables per scenario: the figures, and the
transition sequences (our recovery states, and the sources tried folded
onto PostgreSQL's two, trace.py).  ``table_text`` renders them for a file or
a test without a terminal.
"""
from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from walswitch.compare.servers import median

NUMERIC = ("restore_calls", "restore_segment", "restore_history", "restore_failed", "fetched_twice_bytes",
           "to_streaming_s", "lag_p50_ms", "lag_p99_ms", "catch_up_s", "archive_calls", "commits",
           "stream_starts", "connect_failed", "crash_restarts", "kills_at_points")


def summarize(runs: list[dict]) -> dict[str, Any]:
    first = runs[0]
    out: dict[str, Any] = {k: v for k, v in first.items() if k not in NUMERIC and k != "timeline"}
    for k in NUMERIC:
        vals = [r.get(k) for r in runs if isinstance(r.get(k), (int, float))]
        out[k] = round(median(vals), 3) if vals else None
    by: dict[str, list[float]] = {}
    for r in runs:
        for who, n in (r.get("restore_by") or {}).items():
            by.setdefault(who, []).append(n)
    out["restore_by"] = {who: median(ns) for who, ns in sorted(by.items())}
    out["violations"] = [f"run {i}: {v}" if len(runs) > 1 else v
                         for i, r in enumerate(runs, 1) for v in r.get("violations", [])]
    out["errors"] = [r["error"] for r in runs if r.get("error")]
    out["runs"] = len(runs)
    return out


def _n(v: Any, fmt: str = "{:g}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "-"
    return fmt.format(v)


def _kb(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:,.0f}"


def figures_table(name: str, systems: dict[str, dict]) -> Table:
    t = Table(title=f"{name}: figures (medians)", title_justify="left")
    for col, just in (("system", "left"), ("restore calls\nseg+hist (failed)", "right"), ("by process", "left"),
                      ("fetched\ntwice KB", "right"), ("return →\nstreaming s", "right"),
                      ("lag p50/p99\nms", "right"), ("catch-up\ns", "right"), ("invariant\nviolations", "right")):
        t.add_column(col, justify=just)
    for label, s in systems.items():
        by = ", ".join(f"{k} {v:g}" for k, v in (s.get("restore_by") or {}).items()) or "-"
        calls = (f"{_n(s.get('restore_segment'))}+{_n(s.get('restore_history'))} "
                 f"({_n(s.get('restore_failed'))})")
        viol = len(s.get("violations", []))
        t.add_row(label, calls, by, _kb(s.get("fetched_twice_bytes")), _n(s.get("to_streaming_s"), "{:.2f}"),
                  f"{_n(s.get('lag_p50_ms'), '{:.1f}')}/{_n(s.get('lag_p99_ms'), '{:.1f}')}",
                  _n(s.get("catch_up_s"), "{:.2f}"), str(viol) if not viol else f"[bold red]{viol}[/]")
    return t


def transitions_table(name: str, systems: dict[str, dict]) -> Table:
    t = Table(title=f"{name}: transitions (first run)", title_justify="left", show_lines=True)
    t.add_column("system")
    t.add_column("sources tried (archive/stream)")
    t.add_column("recovery states")
    for label, s in systems.items():
        t.add_row(label, s.get("sources", "-"), s.get("states", "-"))
    return t


def tables(doc: dict) -> list[Table]:
    out = []
    for sc in doc["scenarios"]:
        out += [figures_table(sc["name"], sc["systems"]), transitions_table(sc["name"], sc["systems"])]
    return out


def violations_text(doc: dict) -> list[str]:
    lines = []
    for sc in doc["scenarios"]:
        for label, s in sc["systems"].items():
            for v in s.get("violations", []):
                lines.append(f"{sc['name']} / {label}: {v}")
    return lines


def table_text(doc: dict, width: int = 160) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=False, color_system=None)
    for t in tables(doc):
        con.print(t)
    return buf.getvalue()
