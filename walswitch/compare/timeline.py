"""The comparison's timeline (DESIGN.md section 9): states and positions per system, one PNG.

One panel per system (approach, or PostgreSQL), time in seconds from the start of the scenario:

* background bands: the standby's recovery state (our names; PostgreSQL's log mapped, pglog.py);
* lines: the received and the replayed position, in MB of WAL, sampled every 100 ms;
* vertical lines: the scenario's fault steps.

``Sampler`` collects positions (and, while the load runs, the primary's
``pg_stat_replication.replay_lag``) in a thread; ``record`` makes what
``plot`` draws, JSON-ready.  matplotlib is only needed to draw; without it
the PNG is skipped and said so.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from walswitch.compare.trace import states

STATE_COLOURS = {
    "archive_recovery": "#c6dbef",
    "retry_archive": "#fdd0a2",
    "wait_retry": "#e5e5e5",
    "streaming": "#c7e9c0",
    "promoting": "#fcbba1",
}


class Sampler:
    """Calls ``sample()`` -> (received, replayed) and, when ``lag_on()``, ``lag()`` -> seconds, every interval."""

    def __init__(self, sample: Callable[[], tuple[int | None, int | None]],
                 lag: Callable[[], float | None], lag_on: Callable[[], bool], interval: float = 0.1) -> None:
        self._sample = sample
        self._lag = lag
        self._lag_on = lag_on
        self.interval = interval
        self.samples: list[tuple[float, int | None, int | None]] = []   # (wall clock, received, replayed)
        self.lags: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline-sampler", daemon=True)

    def latest(self) -> tuple[float, int | None, int | None] | None:
        return self.samples[-1] if self.samples else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                rcv, rep = self._sample()
                self.samples.append((time.time(), rcv, rep))
            except Exception:  # noqa: BLE001 - the standby may be between processes or restarting
                pass
            if self._lag_on():
                try:
                    v = self._lag()
                    if v is not None:
                        self.lags.append(v)
                except Exception:  # noqa: BLE001 - the primary may be away on purpose
                    pass

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def record(samples: list[tuple[float, int | None, int | None]], marks: list[tuple[float, str]],
           trace: list[dict], t0: float, t_end: float) -> dict:
    """What ``plot`` needs, relative to t0 (the scenario's start)."""
    spans = []
    st = states(trace)
    for (a, s), nxt in zip(st, st[1:] + [(t_end, "")]):
        if nxt[0] > t0:
            spans.append((round(max(a, t0) - t0, 3), round(nxt[0] - t0, 3), s))
    return {"samples": [(round(t - t0, 3), rcv, rep) for t, rcv, rep in samples if t >= t0],
            "marks": [(round(t - t0, 3), label) for t, label in marks], "states": spans}


def plot(results: list[dict], path: Path, title: str = "") -> str:
    """One panel per result with a ``timeline``; returns a line saying what was written (or why not)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return "timeline PNG skipped: matplotlib is not installed (pip install matplotlib)"
    runs = [r for r in results if r.get("timeline")]
    if not runs:
        return "timeline PNG skipped: no run recorded a timeline"
    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 2.6 * len(runs)), sharex=True, squeeze=False)
    mb = 1024 * 1024
    for ax, r in zip(axes[:, 0], runs):
        tl = r["timeline"]
        for a, b, state in tl["states"]:
            ax.axvspan(a, b, color=STATE_COLOURS.get(state, "white"), lw=0)
        s = tl["samples"]
        ax.plot([t for t, rcv, _ in s if rcv], [rcv / mb for _, rcv, _ in s if rcv], lw=1.2,
                label="received", color="#2171b5")
        ax.plot([t for t, _, rep in s if rep], [rep / mb for _, _, rep in s if rep], lw=1.2,
                label="replayed", color="#cb181d", ls="--")
        for t, label in tl["marks"]:
            ax.axvline(t, color="black", lw=0.8, ls=":")
            ax.annotate(label, (t, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", fontsize=7)
        ax.set_ylabel("WAL, MB")
        ax.set_title(f"{r['label']}: restore_command calls {r.get('restore_calls')} "
                     f"({r.get('restore_failed')} failed), fetched twice {r.get('fetched_twice_bytes')} B",
                     fontsize=9)
    handles = [Patch(color=c, label=s) for s, c in STATE_COLOURS.items()]
    h, lab = axes[0, 0].get_legend_handles_labels()
    axes[0, 0].legend(h + handles, lab + [p.get_label() for p in handles], fontsize=7, loc="lower left",
                      bbox_to_anchor=(0.0, 1.12), ncol=7, frameon=False)
    axes[-1, 0].set_xlabel("seconds since the scenario started")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"timeline PNG: {path}"
