"""``walswitch compare``: run scenarios on every approach (and PostgreSQL), print, write JSON and PNG.

``compare(files, ...)`` is the whole command; ``python -m bench.compare``
calls it too.  For each scenario, each system (the approaches asked for, then
PostgreSQL with ``--postgres``) runs it ``runs`` times, each time on fresh
servers in a scratch directory; the medians go into the tables (report.py),
``OUT/compare-<scenario>.json`` and ``OUT/compare-<scenario>.png``
(timeline.py; the first run of each system).  Exit status: 0, or 1 when an
invariant broke or a run failed, 2 for a usage error (bad scenario file,
PostgreSQL asked for but not found).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from walswitch.compare import pgsystem, report, scenario
from walswitch.compare.progress import Display
from walswitch.compare.run import run_scenario
from walswitch.compare.servers import give_to_postgres, install_signal_handlers
from walswitch.compare.systems import WalswitchSystem
from walswitch.compare.timeline import plot
from walswitch.status import COORDINATION

APPROACHES = ["stop_walreceiver", "concurrent", "walreceiver_restores"]


class UsageError(Exception):
    pass


def parse_approaches(text: str | None) -> list[str]:
    if not text:
        return list(APPROACHES)
    names = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in names if a not in COORDINATION]
    if bad:
        raise UsageError(f"unknown approach(es) {', '.join(bad)} (known: {', '.join(APPROACHES)})")
    return names


def run_system(sc: scenario.Scenario, label: str, runs: int, display: Display, keep: Path | None = None) -> dict:
    """`runs` runs of one scenario on one system; the summary plus every run."""
    results = []
    for i in range(1, runs + 1):
        display.begin(f"{sc.name} · {label} · run {i}/{runs}")
        base = Path(tempfile.mkdtemp(prefix="walswitch-compare-"))
        try:
            if label == "postgresql":
                give_to_postgres(base)
                system = pgsystem.PostgresSystem(base, sc.cluster)
            else:
                system = WalswitchSystem(base, sc.cluster, label)
            res = run_scenario(sc, system, base, display)
        finally:
            if keep is not None:
                shutil.copytree(base, keep / f"{sc.name}-{label}-{i}", symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(base, ignore_errors=True)
        n = len(res["violations"])
        display.done(f"done: {n} invariant violation(s)" + (f", error: {res['error']}" if res.get("error") else ""))
        results.append(res)
    summary = report.summarize(results)
    summary["timeline"] = results[0].get("timeline")
    summary["all_runs"] = [{k: v for k, v in r.items() if k != "timeline"} for r in results]
    return summary


def compare(files: list[str], approaches: list[str], postgres: bool, runs: int, out: Path,
            console: Console, display_console: Console | None = None) -> tuple[dict, int]:
    """Run everything; returns (the JSON document, exit status)."""
    scenarios = [scenario.load(f) for f in files]
    if postgres and (why := pgsystem.available()):
        raise UsageError(why)
    labels = approaches + (["postgresql"] if postgres else [])
    doc: dict[str, Any] = {"scenarios": []}
    with Display(display_console or console) as display:
        for sc in scenarios:
            systems = {label: run_system(sc, label, runs, display) for label in labels}
            png = out / f"compare-{sc.name}.png"
            note = plot([{"label": k, **v} for k, v in systems.items()], png, f"scenario {sc.name}")
            doc["scenarios"].append({"name": sc.name, "file": sc.source, "description": sc.description,
                                     "cluster": asdict(sc.cluster), "steps": [s.text for s in sc.steps],
                                     "runs": runs, "systems": systems, "png": note})
            out.mkdir(parents=True, exist_ok=True)
            with open(out / f"compare-{sc.name}.json", "w") as f:
                json.dump(doc["scenarios"][-1], f, indent=2, default=str)
    for t in report.tables(doc):
        console.print(t)
    for sc in doc["scenarios"]:
        console.print(f"{sc['png']}; JSON: {out / ('compare-' + sc['name'] + '.json')}", highlight=False)
    bad = report.violations_text(doc)
    if bad:
        console.print("[bold red]invariant violations:[/]")
        for line in bad:
            console.print(f"  {line}", highlight=False, markup=False)
    return doc, 1 if bad else 0


def main(args) -> int:
    """The ``walswitch compare`` subcommand (arguments parsed by walswitch/cli.py)."""
    install_signal_handlers()
    stream = sys.stderr if args.json else sys.stdout
    stdout = Console(file=stream, width=None if stream.isatty() else 160)
    try:
        approaches = parse_approaches(args.approaches)
        if args.runs < 1:
            raise UsageError("--runs must be at least 1")
        doc, code = compare(args.scenarios, approaches, args.postgres, args.runs, Path(args.out), stdout,
                            Console(file=sys.stderr))
    except (UsageError, scenario.ScenarioError) as e:
        print(f"walswitch compare: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        for sc in doc["scenarios"]:
            for s in sc["systems"].values():
                s.pop("timeline", None)
        print(json.dumps(doc, indent=2, default=str))
    return code
