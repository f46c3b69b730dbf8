"""What ``make demo`` shows on a terminal, and the comparison table it ends with.

``observe(standby_dir, primary)`` reads one moment of the demo's cluster:
per process a ``ProcessRow`` (state, received / flushed / replayed
positions, lag behind the primary).  The standby's postmaster, startup and
walreceiver come from the standby's ``postmaster.pid`` and shared memory
(what ``walswitch status`` reads); the primary's flush position and its
walsender from the primary over SQL (``pg_current_wal_lsn()``,
``pg_stat_replication``), as a person would look.  ``process_table`` draws
the rows as a ``rich`` table that demo.py's ``Live`` redraws in place; this
module reads only, it never wakes or changes a process.

``comparison(...)`` turns the run's events into the document
``walswitch compare`` prints (walswitch/compare: the same trace, figures and
tables, no second implementation), with this run's lag samples, catch-up
time and data check filled in.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from postmaster import pidfile
from shmem.segment import SharedState, ShmemError
from shmem.states import RecoveryState, walrcv_state_name
from walswitch.compare import invariants
from walswitch.compare.figures import figures
from walswitch.compare.servers import percentile
from walswitch.compare.trace import walswitch_trace
from walswitch.status import WAL_SOURCES
from xlog.lsn import format_lsn

SEGSIZE = 1024 * 1024          # the demo's primary is made with --wal-segsize 1
COLUMNS = ("process", "pid", "state", "received", "flushed", "replayed", "lag")


@dataclass
class ProcessRow:
    process: str
    pid: int | None = None
    state: str = "-"
    received: int | None = None      # LSNs; None = not applicable or unknown
    flushed: int | None = None
    replayed: int | None = None
    lag: str = ""                    # bytes behind the primary's flush, or replay_lag
    alert: bool = False              # drawn in red: down, cut, not running

    def cells(self) -> list[str]:
        def pos(v: int | None) -> str:
            return format_lsn(v) if v else "-"
        state = f"[red]{self.state}[/]" if self.alert else self.state
        return [self.process, str(self.pid) if self.pid else "-", state, pos(self.received), pos(self.flushed),
                pos(self.replayed), self.lag or "-"]


@dataclass
class PrimaryView:
    """What the demo's probe saw on the primary (None: not reachable)."""
    flush: int | None
    walsender: dict[str, Any] | None   # the standby's pg_stat_replication row


def _behind(flush: int | None, pos: int | None) -> str:
    return f"{max(0, flush - pos):,} B" if flush is not None and pos else ""


def standby_rows(sdir: str, flush: int | None) -> list[ProcessRow]:
    """The standby's postmaster, startup and walreceiver, from postmaster.pid and shared memory."""
    info = pidfile.read(sdir)
    if not pidfile.is_running(info):
        return [ProcessRow("standby postmaster", state="not running", alert=True)]
    rows = [ProcessRow("standby postmaster", info.pid, info.status or "-")]
    try:
        sh = SharedState.attach(sdir)
    except ShmemError:
        return rows + [ProcessRow("startup", state="(shared memory being recreated)", alert=True)]
    try:
        r, w = sh.recovery.snapshot(), sh.walrcv.snapshot()
    finally:
        sh.close()
    try:
        rstate = RecoveryState(r["state"]).name.lower()
    except ValueError:
        rstate = str(r["state"])
    source = WAL_SOURCES.get(r["wal_source"]) or "-"
    replay = r["replay_lsn"] or None
    rows.append(ProcessRow("startup", r["startup_pid"] or None, f"{rstate} (source {source})",
                           replayed=replay, lag=_behind(flush, replay), alert=not r["startup_pid"]))
    wstate = walrcv_state_name(w["state"])
    rows.append(ProcessRow("walreceiver", w["pid"] or None, wstate, received=w["written_lsn"] or None,
                           flushed=w["flushed_lsn"] or None, lag=_behind(flush, w["flushed_lsn"] or None),
                           alert=wstate == "stopped"))
    return rows


def primary_rows(p: PrimaryView, link: str) -> list[ProcessRow]:
    """The primary and its walsender (positions the standby reported), and the link proxy between them."""
    if p.flush is None:
        rows = [ProcessRow("primary", state="down", alert=True)]
    else:
        rows = [ProcessRow("primary", state="running", flushed=p.flush)]
    ws = p.walsender
    if ws is None:
        rows.append(ProcessRow("primary walsender", state="-" if p.flush is None else "none", alert=True))
    else:
        lag = ws.get("replay_lag")
        rows.append(ProcessRow("primary walsender", ws.get("pid"), ws.get("state") or "-",
                               received=ws.get("write_lsn"), flushed=ws.get("flush_lsn"),
                               replayed=ws.get("replay_lsn"),
                               lag="" if lag is None else f"{lag * 1000:.0f} ms"))
    rows.append(ProcessRow("link", state=link, alert=link != "normal"))
    return rows


def observe(sdir: str, p: PrimaryView, link: str) -> list[ProcessRow]:
    try:
        standby = standby_rows(sdir, p.flush)
    except Exception as e:  # noqa: BLE001 - the standby between processes: show it, do not stop the demo
        standby = [ProcessRow("standby", state=f"({type(e).__name__})", alert=True)]
    return primary_rows(p, link) + standby


def process_table(rows: list[ProcessRow], title: str, last_fault: str) -> Table:
    tab = Table(title=title, title_justify="left", caption=last_fault or None, caption_justify="left")
    for col in COLUMNS:
        tab.add_column(col, justify="right" if col in ("pid", "lag") else "left")
    for r in rows:
        tab.add_row(*r.cells())
    return tab


# ------------------------------------------------------------------ the comparison table at the end
def comparison(sdir: str, pdir: str, coordination: str, returns: list[dict], lags: list[float],
               catch_up_s: float | None, data_violations: list[str]) -> dict:
    """The ``walswitch compare`` document of this run: one scenario ("demo"), one system."""
    trace = walswitch_trace(Path(sdir), [Path(pdir)])
    figs = figures(trace, SEGSIZE, returns)
    figs["lag_p50_ms"] = round(percentile(lags, 50) * 1000, 1) if lags else None
    figs["lag_p99_ms"] = round(percentile(lags, 99) * 1000, 1) if lags else None
    figs["catch_up_s"] = None if catch_up_s is None else round(catch_up_s, 3)
    figs["violations"] = data_violations + invariants.double_writes(trace, SEGSIZE)
    return {"scenarios": [{"name": "demo (this run)", "systems": {coordination: figs}}]}
