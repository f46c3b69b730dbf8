"""``walswitch status``: the server's state, from shared memory (DESIGN.md section 4 names)."""
from __future__ import annotations

import os
from typing import Any

from postmaster import pidfile
from shmem.segment import SharedState, ShmemError
from xlog.lsn import format_lsn

WAL_SOURCES = {0: None, 1: "archive", 2: "pg_wal", 3: "stream"}
COORDINATION = ("concurrent", "stop_walreceiver", "walreceiver_restores")


def _lsn(v: int) -> str | None:
    return format_lsn(v) if v else None


def collect(datadir: str) -> dict[str, Any]:
    standby = os.path.exists(os.path.join(datadir, "standby.signal"))
    out: dict[str, Any] = {
        "mode": "standby" if standby else "primary", "postmaster_pid": None, "coordination": None,
        "recovery_state": None, "wal_source": None, "timeline": None, "replay_lsn": None,
        "receive_lsn": None, "flush_lsn": None, "walreceiver_state": None, "walreceiver_pid": None,
        "startup_pid": None, "last_restored_segment": None, "pm_status": None,
    }
    info = pidfile.read(datadir)
    if not pidfile.is_running(info):
        return out
    out["postmaster_pid"] = info.pid
    out["pm_status"] = info.status
    try:
        sh = SharedState.attach(datadir)
    except ShmemError:
        return out
    try:
        x = sh.xlog.snapshot()
        r = sh.recovery.snapshot()
        w = sh.walrcv.snapshot()
    finally:
        sh.close()
    in_recovery = bool(x["in_recovery"]) or standby
    out["mode"] = "standby" if in_recovery else "primary"
    out["coordination"] = COORDINATION[r["coordination"]] if r["coordination"] < 3 else None
    out["timeline"] = (r["replay_tli"] or r["timeline"]) if in_recovery else x["timeline"]
    out["flush_lsn"] = _lsn(x["flush_lsn"]) if not in_recovery else None
    if in_recovery:
        from shmem.states import RecoveryState, walrcv_state_name
        try:
            out["recovery_state"] = RecoveryState(r["state"]).name.lower()
        except ValueError:
            out["recovery_state"] = str(r["state"])
        out["wal_source"] = WAL_SOURCES.get(r["wal_source"])
        out["replay_lsn"] = _lsn(r["replay_lsn"])
        out["receive_lsn"] = _lsn(w["flushed_lsn"])
        out["walreceiver_state"] = walrcv_state_name(w["state"])
        out["walreceiver_pid"] = w["pid"] or None
        out["startup_pid"] = r["startup_pid"] or None
        out["last_restored_segment"] = r["last_restored_segment"] or None
    return out
