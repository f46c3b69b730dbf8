"""The comparison's timeline (DESIGN.md section 9): states and LSNs per approach, one PNG.

One panel per approach, time in seconds from the standby's start:

* background bands: the startup's recovery state (from its ``recovery_state``
  events), so archive / retry / wait / streaming periods show at a glance;
* lines: the walreceiver's received position and the startup's replay
  position, in MB of WAL (sampled with ``walswitch status`` every 100 ms);
* vertical lines: the scripted faults (primary stopped, primary back).

``Sampler`` collects the positions during a run; ``plot`` draws from what each
run recorded (``timeline`` in its result).  matplotlib is only needed to draw
(``make bench`` installs it); without it the PNG is skipped and said so.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from bench.common import parse_lsn, ws_status

STATE_COLOURS = {
    "archive_recovery": "#c6dbef",
    "retry_archive": "#fdd0a2",
    "wait_retry": "#e5e5e5",
    "streaming": "#c7e9c0",
    "promoting": "#fcbba1",
}


class Sampler:
    """Samples a standby's positions every `interval` seconds in a thread, until stopped."""

    def __init__(self, datadir: Path, interval: float = 0.1) -> None:
        self.datadir = datadir
        self.interval = interval
        self.samples: list[tuple[float, int | None, int | None]] = []   # (mono, receive, replay)
        self.marks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline-sampler", daemon=True)

    def mark(self, label: str) -> None:
        self.marks.append((time.monotonic(), label))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                st = ws_status(self.datadir)
            except Exception:  # noqa: BLE001 - the standby may be between processes
                continue
            self.samples.append((time.monotonic(), parse_lsn(st.get("receive_lsn") or None),
                                 parse_lsn(st.get("replay_lsn") or None)))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def record(self, events: list[dict]) -> dict:
        """What ``plot`` needs, JSON-ready: samples, marks and state spans relative to the standby's start."""
        starts = [e["mono"] for e in events if e["kind"] == "standby_start"]
        t0 = starts[0] if starts else (self.samples[0][0] if self.samples else 0.0)
        spans = []
        cur: tuple[float, str] | None = None
        for e in events:
            if e["kind"] == "recovery_state":
                if cur is not None:
                    spans.append((cur[0] - t0, e["mono"] - t0, cur[1]))
                cur = (e["mono"], e.get("to", ""))
        end = self.samples[-1][0] if self.samples else (cur[0] if cur else t0)
        if cur is not None:
            spans.append((cur[0] - t0, end - t0, cur[1]))
        return {"samples": [(t - t0, rcv, rep) for t, rcv, rep in self.samples],
                "marks": [(t - t0, label) for t, label in self.marks], "states": spans}


def plot(results: list[dict], path: Path) -> str:
    """Draw one panel per approach into `path`; returns a line saying what was written (or why not)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return "timeline PNG skipped: matplotlib is not installed (make bench installs it)"
    runs = [r for r in results if r.get("timeline")]
    if not runs:
        return "timeline PNG skipped: no run recorded a timeline"
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 3.2 * len(runs)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], runs):
        tl = r["timeline"]
        for a, b, state in tl["states"]:
            ax.axvspan(a, b, color=STATE_COLOURS.get(state, "white"), lw=0)
        s = tl["samples"]
        mb = 1024 * 1024
        ax.plot([t for t, rcv, _ in s if rcv], [rcv / mb for _, rcv, _ in s if rcv], lw=1.2,
                label="received (walreceiver)", color="#2171b5")
        ax.plot([t for t, _, rep in s if rep], [rep / mb for _, _, rep in s if rep], lw=1.2,
                label="replayed (startup)", color="#cb181d", ls="--")
        for t, label in tl["marks"]:
            ax.axvline(t, color="black", lw=0.8, ls=":")
            ax.annotate(label, (t, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", fontsize=7)
        ax.set_ylabel("WAL position, MB")
        ax.set_title(f"{r['approach']}: restore_command calls {r.get('restore_calls')} "
                     f"({r.get('restore_failed')} failed), fetched twice {r.get('fetched_twice_bytes')} B", fontsize=9)
    handles = [Patch(color=c, label=f"recovery state {s}") for s, c in STATE_COLOURS.items()]
    h, lab = axes[0, 0].get_legend_handles_labels()
    axes[0, 0].legend(h + handles, lab + [p.get_label() for p in handles], fontsize=7, loc="lower right", ncol=2)
    axes[-1, 0].set_xlabel("seconds since the standby started")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"timeline PNG: {path}"
