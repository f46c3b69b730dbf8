"""``walswitch soak``: random fault schedules on every approach, the invariants checked after each.

A schedule is a short scenario (scenario.py) drawn from the step vocabulary
by ``schedule(seed)``: the load runs, then 2 to 5 faults, each followed by a
short wait: the primary stopped (fast or immediate) and started again or
restarted, the link cut and restored or flapping, the archive slow, failing
or hiding the current or next segment, a SIGKILL of the startup, the
walreceiver, the walsender or the postmaster, or of the startup or the
walreceiver at a random injection point, a checkpoint, a segment switch.
The runner (run.py) heals what is left broken, waits for the catch-up and
checks the invariants (invariants.py; leaks by the systems).  A seed always
gives the same schedule, so ``--seed S --schedules 1`` replays one.

On a violation the seed, the approach and the schedule are printed as a
scenario file (also written to ``OUT/soak-<seed>-<approach>.toml``) that
``walswitch compare FILE --approaches APPROACH`` runs again step for step.
``OUT/soak.json`` has, per approach: schedules run, faults by kind,
violations.  Exit status 1 when any schedule broke an invariant.
"""
from __future__ import annotations

import collections
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from walswitch.compare import scenario as scn
from walswitch.compare.command import UsageError, parse_approaches
from walswitch.compare.progress import Display
from walswitch.compare.run import run_scenario
from walswitch.compare.scenario import POINTS, Cluster, Scenario, Step, parse_step
from walswitch.compare.servers import install_signal_handlers
from walswitch.compare.systems import WalswitchSystem

SOAK_CLUSTER = dict(restore_latency_ms=20, retry_interval_ms=500, load_rate=300, row_size=500, timeout_s=30.0,
                    checkpoint_timeout_s=30)


def _wait(rng: random.Random) -> str:
    return f"wait {rng.choice((0.2, 0.5, 0.8, 1.2, 1.5))}"


def _fault(rng: random.Random) -> list[str]:
    """One fault, as the steps that make it (a stop is followed by its start)."""
    kind = rng.choices(["primary", "link", "archive", "kill", "kill_at", "wal"], [3, 4, 3, 3, 3, 2])[0]
    if kind == "primary":
        mode = rng.choice(("fast", "immediate"))
        if rng.random() < 0.4:
            return [f"primary restart -m {mode}"]
        return [f"primary stop -m {mode}", _wait(rng), "primary start"]
    if kind == "link":
        if rng.random() < 0.4:
            return [f"link flap {rng.randint(1, 3)} {rng.choice((200, 400, 800))}"]
        return ["link cut", rng.choice(("switch_wal", _wait(rng))), _wait(rng), "link restore"]
    if kind == "archive":
        what = rng.choice(("slow", "fail", "hide"))
        if what == "slow":
            return [f"archive slow {rng.choice((100, 200, 400))}"]
        if what == "fail":
            return ["archive fail", _wait(rng), "archive restore"]
        return [f"archive hide current{rng.choice(('', '+1'))}"]
    if kind == "kill":
        return [f"kill {rng.choice(('startup', 'walreceiver', 'walsender', 'postmaster'))}"]
    if kind == "kill_at":
        role = rng.choice(("startup", "walreceiver"))
        return [f"kill {role} at {rng.choice(POINTS[role])}"]
    return [rng.choice(("checkpoint", "switch_wal"))]


def schedule(seed: int, settings: dict[str, Any] | None = None) -> Scenario:
    rng = random.Random(seed)
    steps = ["load on", _wait(rng)]
    for _ in range(rng.randint(2, 5)):
        steps += _fault(rng)
        steps.append(_wait(rng))
    cluster = Cluster(**SOAK_CLUSTER, settings=dict(settings or {}))
    return Scenario(f"soak-{seed}", f"walswitch soak schedule, seed {seed}", cluster,
                    [parse_step(s) for s in steps])


def fault_kind(step: Step) -> str | None:
    """The kind a fault is counted under in the summary."""
    if not step.is_fault and step.verb not in ("checkpoint", "switch_wal"):
        return None
    if step.verb == "kill":
        return f"kill {step.action} at a point" if step.point else f"kill {step.action}"
    if step.verb in ("checkpoint", "switch_wal"):
        return step.verb
    if step.verb == "primary" and step.action == "start":
        return None
    if step.verb == "link" and step.action == "restore":
        return None
    if step.verb == "archive" and step.action == "restore":
        return None
    return f"{step.verb} {step.action}"


def replay_file(sc: Scenario, approach: str, violations: list[str]) -> str:
    comment = (f"walswitch soak: seed {sc.name.removeprefix('soak-')}, approach {approach}; violations:\n"
               + "\n".join(f"  {v}" for v in violations)
               + f"\nreplay: walswitch compare THIS_FILE --approaches {approach}")
    return scn.dumps(sc, comment)


def summary_table(summary: dict[str, dict]) -> Table:
    t = Table(title="walswitch soak", title_justify="left")
    t.add_column("approach")
    t.add_column("schedules", justify="right")
    t.add_column("faults injected by kind")
    t.add_column("violations", justify="right")
    for approach, s in summary.items():
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items()))
        t.add_row(approach, str(s["schedules"]), faults, str(len(s["violating_seeds"])))
    return t


def soak(n: int, seed: int, approaches: list[str], settings: dict[str, Any], out: Path, console: Console,
         stop_at_first: bool = False, display_console: Console | None = None,
         steps: bool = True) -> tuple[dict, int]:
    """Run the schedules; ``console`` gets violations and the summary table, ``display_console`` (default
    the same) the progress, every step of it or (``steps=False``) one line per schedule begun and ended."""
    summary: dict[str, dict] = {a: {"schedules": 0, "faults": collections.Counter(), "violating_seeds": [],
                                    "violations": []} for a in approaches}
    out.mkdir(parents=True, exist_ok=True)
    found = False
    with Display(display_console or console, steps) as display:
        for i in range(n):
            s = seed + i
            sc = schedule(s, settings)
            for approach in approaches:
                display.begin(f"soak · {approach} · schedule {i + 1}/{n} · seed {s}")
                base = Path(tempfile.mkdtemp(prefix="walswitch-soak-"))
                try:
                    res = run_scenario(sc, WalswitchSystem(base, sc.cluster, approach), base, display)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
                entry = summary[approach]
                entry["schedules"] += 1
                entry["faults"].update(k for st in sc.steps if (k := fault_kind(st)))
                if res["violations"]:
                    found = True
                    text = replay_file(sc, approach, res["violations"])
                    path = out / f"soak-{s}-{approach}.toml"
                    path.write_text(text)
                    entry["violating_seeds"].append(s)
                    entry["violations"].append({"seed": s, "violations": res["violations"], "file": str(path)})
                    display.done(f"{len(res['violations'])} invariant(s) broken; replay file {path}")
                    console.print(f"[bold red]VIOLATION[/] seed {s}, approach {approach}: "
                                  f"{len(res['violations'])} invariant(s) broken; replay: "
                                  f"walswitch compare {path} --approaches {approach}")
                    console.print(text, markup=False, highlight=False)
                else:
                    display.done("invariants hold")
                if found and stop_at_first:
                    break
            if found and stop_at_first:
                break
    doc = {"seed": seed, "schedules_per_approach": n, "settings": settings,
           "approaches": {a: {**v, "faults": dict(v["faults"])} for a, v in summary.items()}}
    with open(out / "soak.json", "w") as f:
        json.dump(doc, f, indent=2)
    console.print(summary_table(summary))
    return doc, 1 if found else 0


def parse_settings(items: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"-c takes NAME=VALUE, not {item!r}")
        out[name.strip()] = value.strip()
    return out


def main(args) -> int:
    install_signal_handlers()
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        approaches = parse_approaches(args.approaches)
        if args.schedules < 1:
            raise UsageError("--schedules must be at least 1")
        settings = parse_settings(args.settings)
    except UsageError as e:
        print(f"walswitch soak: error: {e}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    console.print(f"walswitch soak: {args.schedules} schedule(s) per approach from seed {seed} "
                  f"(replay one: walswitch soak --schedules 1 --seed S --approaches A)", highlight=False)
    _doc, code = soak(args.schedules, seed, approaches, settings, Path(args.out), console, args.stop_at_first)
    return code
