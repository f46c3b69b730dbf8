"""``walswitch soak`` as a benchmark: 200 random fault schedules per approach, and the planted hazard.

Part 1: ``walswitch soak --schedules 200 --seed 1000`` on the three approaches
(schedules run, faults injected by kind, violations; target 0).
Part 2: the same soak on ``concurrent`` with ``concurrent_guard = off``
(seed 5000), stopped at the first violation: it must find the double-write
hazard within 200 schedules and name the seed that replays it.
The product's own code (walswitch/compare/soak.py); files in bench-results/soak*/.
"""
from __future__ import annotations

import io
import sys

from rich.console import Console

from bench.common import ROOT
from walswitch.compare.command import APPROACHES
from walswitch.compare.soak import soak

TITLE = "walswitch soak: 200 random fault schedules per approach; concurrent_guard = off must be caught"
SCHEDULES = 200


def run(schedules: int = SCHEDULES) -> dict:
    buf = io.StringIO()
    con = Console(file=buf, width=160, force_terminal=False, color_system=None)
    # Hours of schedules: one line per schedule begun and ended on stdout, so progress shows.
    progress = Console(file=sys.stdout, width=160, force_terminal=False, color_system=None)
    doc, _ = soak(schedules, 1000, APPROACHES, {}, ROOT / "bench-results" / "soak", con,
                  display_console=progress, steps=False)
    off, _ = soak(schedules, 5000, ["concurrent"], {"concurrent_guard": "off"},
                  ROOT / "bench-results" / "soak-guard-off", con, stop_at_first=True,
                  display_console=progress, steps=False)
    hunt = off["approaches"]["concurrent"]
    found = hunt["violations"][0] if hunt["violations"] else None
    lines = [f"{a}: {v['schedules']} schedules, {sum(v['faults'].values())} faults, "
             f"{len(v['violating_seeds'])} violating" for a, v in doc["approaches"].items()]
    lines.append("concurrent_guard = off: " + (f"violation found at schedule {hunt['schedules']} (seed "
                                                  f"{found['seed']}): {found['violations'][0]}"
                                                  if found else f"no violation in {hunt['schedules']} schedules"))
    return {"soak": doc, "guard_off": off, "table": "\n".join(lines)}
