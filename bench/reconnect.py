"""Primary back -> streaming, per approach and for PostgreSQL 15, with ``wal_retrieve_retry_interval = 5s``.

A thin use of ``walswitch compare`` on ``scenarios/reconnect.toml``: six immediate stops of the
primary under load, away 1.2 to 8.4 s (lengths unrelated to the retry interval), each followed by
a start; per return, the seconds from the restarted primary's first "ready" to the standby
streaming again (the product's ``to_streaming`` figure).  Reported: per system the median over all
returns of all runs (``runs`` runs, 6 returns each).  concurrent and walreceiver_restores reconnect on
their own backoff (50 ms doubling to 0.5 s); stop_walreceiver waits, as PostgreSQL's standby does,
for the startup's next retry round.
"""
from __future__ import annotations

import io
import statistics

from rich.console import Console

from bench.common import ROOT, ratio
from walswitch.compare import pgsystem
from walswitch.compare.command import APPROACHES, compare

TITLE = "primary back -> streaming (s), 6 outages of 1.2-8.4 s, wal_retrieve_retry_interval = 5s"
SCENARIO = ROOT / "scenarios" / "reconnect.toml"


def run(runs: int = 3) -> dict:
    buf = io.StringIO()
    con = Console(file=buf, width=160, force_terminal=False, color_system=None)
    postgres = pgsystem.available() is None
    doc, _code = compare([str(SCENARIO)], APPROACHES, postgres, runs, ROOT / "bench-results", con,
                         Console(file=io.StringIO()))
    sc = doc["scenarios"][0]
    per: dict[str, list[float]] = {}
    for label, s in sc["systems"].items():
        s.pop("timeline", None)
        secs = [b["seconds"] for r in s.get("all_runs", [s]) for b in r.get("to_streaming", [])
                if b.get("seconds") is not None]
        per[label] = secs
    p50 = {k: statistics.median(v) if v else float("nan") for k, v in per.items()}
    pg = p50.get("postgresql", float("nan"))
    rows = [{"metric": f"return -> streaming p50 s, {a}", "walswitch": p50[a], "postgresql": pg,
             "ratio": ratio(p50[a], pg), "better": "lower"} for a in APPROACHES if a in p50]
    return {"title": TITLE, "runs": runs, "returns_seconds": per, "p50_seconds": p50, "rows": rows,
            "table": buf.getvalue()}
