"""The invariants of DESIGN.md section 8, as checks every fault test runs afterwards.

1. The standby's data equals the primary's data at the standby's replay LSN.
2. Completed segments in the standby's pg_wal are byte-identical to the primary's (or the archive's).
3. Replay never moves backwards past what was durably applied (``ReplayWatch``).
4. When the primary is reachable again, streaming resumes within a bound (``wait_streaming``).
5. No process, shared memory segment or semaphore outlives the server (the ``nodes`` fixture).
"""
from __future__ import annotations

import os
from pathlib import Path

from tests.cluster import Node, wait_for
from xlog.lsn import is_segment_name, parse_lsn


def replay_lsn(standby: Node) -> int:
    st = standby.status()
    return parse_lsn(st["replay_lsn"]) if st.get("replay_lsn") else 0


def wait_caught_up(primary: Node, standby: Node, timeout: float = 60.0) -> int:
    """Wait until the standby replayed everything the primary flushed; returns that LSN."""
    target = primary.flush_lsn()
    wait_for(lambda: replay_lsn(standby) >= target, timeout,
             f"{standby.name} to replay up to the primary's flush position")
    return target


def check_data_equal(primary: Node, standby: Node, timeout: float = 60.0) -> None:
    """Invariant 1 (quiesced form): after catching up, the standby's rows equal the primary's."""
    wait_caught_up(primary, standby, timeout)
    prim = dict(primary.sql("SELECT key, value FROM kv"))
    stby = dict(standby.sql("SELECT key, value FROM kv")) if standby.is_running() else standby.dump()[0]
    missing = sorted(set(prim) - set(stby))[:5]
    extra = sorted(set(stby) - set(prim))[:5]
    differ = sorted(k for k in set(prim) & set(stby) if prim[k] != stby[k])[:5]
    if missing or extra or differ:
        from storage.kvstore import dump
        st = standby.status()
        applied = dump(standby.datadir)[1]
        raise AssertionError(
            f"standby {standby.name} differs from primary: missing {missing}, extra {extra}, different {differ}; "
            f"primary flush {primary.flush_lsn():X}, standby replay {st.get('replay_lsn')}, "
            f"store applied {applied:X}, state {st.get('recovery_state')}")


def check_segments_identical(standby: Node, *sources: str) -> int:
    """Invariant 2: every completed segment the standby holds equals the same-named file in a source.

    The newest segment of each timeline may still be filling and is skipped.
    Returns how many segments were compared.
    """
    pg_wal = Path(standby.datadir, "pg_wal")
    names = sorted(n for n in os.listdir(pg_wal) if is_segment_name(n))
    newest_per_tli: dict[str, str] = {}
    for n in names:
        newest_per_tli[n[:8]] = max(newest_per_tli.get(n[:8], n), n)
    compared = 0
    for n in names:
        if n == newest_per_tli[n[:8]]:
            continue
        for src in sources:
            other = Path(src, n)
            if other.exists() and other.stat().st_size == (pg_wal / n).stat().st_size:
                a, b = (pg_wal / n).read_bytes(), other.read_bytes()
                assert a == b, f"segment {n} of {standby.name} differs from {other}"
                compared += 1
                break
    return compared


class ReplayWatch:
    """Invariant 3: the durably applied position never goes backwards across faults."""

    def __init__(self, standby: Node):
        self.standby = standby
        self.high = 0

    def sample(self) -> int:
        from storage.kvstore import dump
        try:
            _rows, lsn = dump(self.standby.datadir)
        except Exception:  # noqa: BLE001 - the store may be mid-write; the next sample sees it
            return self.high
        assert lsn >= self.high, f"applied LSN went backwards: {lsn:X} < {self.high:X}"
        self.high = lsn
        return lsn


def wait_streaming(standby: Node, timeout: float) -> None:
    """Invariant 4: streaming (re)established within the bound the retry settings give."""
    wait_for(lambda: standby.status().get("walreceiver_state") == "streaming"
             and standby.status().get("recovery_state") == "streaming", timeout,
             f"{standby.name} to stream")
