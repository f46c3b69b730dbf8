"""Diagrams of the state machines, generated from their transition tables.

``python -m walswitch.diagram`` prints Mermaid ``stateDiagram-v2`` blocks for the
startup's recovery states (startup/standby.py ``TRANSITIONS``), the walreceiver's
states (walreceiver/walreceiver.py) and the postmaster's (postmaster/postmaster.py),
plus the table of what each coordination approach does at the shared hook
points (startup/policy.py).  The README embeds this output; a test checks they
agree, so the pictures cannot drift from the code.
"""
from __future__ import annotations

import sys
from enum import IntEnum


def mermaid(title: str, table: dict, initial: IntEnum | None = None, final: set | None = None) -> str:
    lines = ["```mermaid", "stateDiagram-v2"]
    if initial is not None:
        lines.append(f"    [*] --> {initial.name}")
    for src in table:
        for dst in sorted(table[src], key=int):
            lines.append(f"    {src.name} --> {dst.name}")
    for f in sorted(final or (), key=int):
        lines.append(f"    {f.name} --> [*]")
    lines.append("```")
    return f"**{title}**\n\n" + "\n".join(lines)


def policy_table() -> str:
    from startup.policy import POLICIES
    hooks = ["startup_restores", "before_restore", "archive_dry", "stream_lost", "may_retry_archive"]
    head = "| hook | " + " | ".join(POLICIES) + " |"
    sep = "|---" * (len(POLICIES) + 1) + "|"
    rows = [head, sep]
    for h in hooks:
        cells = []
        for cls in POLICIES.values():
            if h == "startup_restores":
                cells.append("yes" if cls.startup_restores else "no")
                continue
            fn = getattr(cls, h)
            doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            cells.append(doc or "-")
        rows.append(f"| `{h}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render() -> str:
    from postmaster.postmaster import PMState
    from postmaster.postmaster import TRANSITIONS as PM
    from startup.standby import TRANSITIONS as REC
    from shmem.states import RecoveryState
    parts = [mermaid("Startup process: recovery state (startup/standby.py)",
                     {k: v for k, v in REC.items() if k != RecoveryState.NOT_STARTED},
                     RecoveryState.ARCHIVE_RECOVERY, {RecoveryState.DONE})]
    try:
        from walreceiver.walreceiver import TRANSITIONS as WR
        from shmem.states import WalRcvState
        parts.append(mermaid("Walreceiver (walreceiver/walreceiver.py)", WR, WalRcvState.STOPPED))
    except ImportError:
        pass
    parts.append(mermaid("Postmaster (postmaster/postmaster.py)", PM, PMState.INIT, {PMState.EXIT}))
    parts.append("**What each approach does at the shared hook points (startup/policy.py)**\n\n" + policy_table())
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
