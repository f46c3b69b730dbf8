"""Issue 4, walreceiver side: ``standby_wal_coordination = walreceiver_restores``, end to end.

The walreceiver is the only process that fetches WAL: it streams while it can
and runs restore_command itself when it cannot; the startup only reads pg_wal
up to what the walreceiver flushed.

* catch-up from the archive with the primary down, every restore_command run
  by a walreceiver process (never the startup), then streaming takes over
  when the primary returns;
* ``walreceiver_restore_prefetch = 4`` with a 50 ms restore_command: several
  restores run at once and segments are restored ahead of replay;
* a walreceiver killed (SIGKILL) while its restore_command runs: the
  crash-restart cycle, and the standby catches up with nothing lost.
"""
from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from shmem.segment import SharedState
from shmem.states import WalSource
from tests.cluster import free_port, wait_for
from tests.invariants import ReplayWatch, check_data_equal, check_segments_identical, wait_streaming
from tests.standby_helpers import archived, make_primary, wait_archived, write_rows
from xlog.lsn import parse_lsn, parse_segment_name, segment_start

SEG = 1024 * 1024
COORD = "walreceiver_restores"


def dead_conninfo() -> str:
    return f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2"


def pids_of(node, role: str) -> set[int]:
    """Every pid the postmaster forked for a role (from its "fork" events)."""
    return {e["child_pid"] for e in node.events("fork") if e.get("child") == role}


def count_rows(node) -> int:
    try:
        return node.sql("SELECT count(*) FROM kv")[0][0]
    except Exception:  # noqa: BLE001 - not accepting connections yet
        return -1


def fetch_source(node) -> WalSource:
    sh = SharedState.attach(node.datadir)
    try:
        return WalSource(sh.walrcv.get("fetch_source"))
    finally:
        sh.close()


def assert_only_walreceiver_restored(node) -> list[dict]:
    """Every restore event comes from a walreceiver process, none from a startup process."""
    restores = node.events("restore")
    wr_pids, st_pids = pids_of(node, "walreceiver"), pids_of(node, "startup")
    assert restores, "no restore_command ran at all"
    assert st_pids and not wr_pids & st_pids
    for e in restores:
        assert e["by"] == "walreceiver" and e["role"] == "walreceiver", e
        assert e["pid"] in wr_pids and e["pid"] not in st_pids, e
    return restores


@pytest.mark.timeout(240)
def test_catch_up_from_archive_then_streaming_takes_over(nodes, tmp_path):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100)
    standby = nodes.standby(primary, start=False, archive=archive, standby_wal_coordination=COORD)
    write_rows(primary, 100, 900, size=1000, switch_every=300)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    n_archived = len(archived(archive))
    assert n_archived >= 4
    primary.stop("fast")        # the shutdown checkpoint stays in the primary's pg_wal: not archived

    standby.start(wait_ready=False)
    watch = ReplayWatch(standby)
    # Everything the archive holds gets replayed, with nobody to stream from.
    wait_for(lambda: count_rows(standby) == 1000, 90, "the standby to replay the archive")
    watch.sample()
    assert fetch_source(standby) in (WalSource.ARCHIVE, WalSource.NONE)
    wait_for(lambda: any(e["file"] == sorted(archived(archive))[-1] for e in standby.events("restore") if e["ok"]),
             30, "the last archived segment restored")
    # The archive has nothing more: it is asked again, no faster than wal_retrieve_retry_interval (1 s).
    wait_for(lambda: len([e for e in standby.events("restore") if not e["ok"]]) >= 3, 30,
             "three failed archive attempts")
    text = standby.log_text()
    assert "LOG:  could not connect to the primary server" in text
    assert "FATAL:  could not connect to the primary server" not in text
    assert not [e for e in standby.events("child_exit") if e["child"] == "walreceiver"], \
        "the walreceiver exited instead of falling back to the archive"

    # The primary returns: the walreceiver streams from its flushed position, a segment start.
    primary.start()
    write_rows(primary, 1000, 200)
    wait_streaming(standby, 30)
    check_data_equal(primary, standby)
    watch.sample()
    assert fetch_source(standby) == WalSource.STREAM
    connects = standby.events("walreceiver_connect")
    assert connects and parse_lsn(connects[-1]["start_lsn"]) % SEG == 0
    restores = assert_only_walreceiver_restored(standby)
    fails: dict[str, list[float]] = {}
    for e in restores:
        if not e["ok"]:
            fails.setdefault(e["file"], []).append(e["mono"])
    for f, times in fails.items():
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(g >= 0.95 for g in gaps), f"{f} retried too fast: {gaps}"
    fetched = [e["file"] for e in standby.events("segment_fetched") if e.get("by") == "walreceiver"]
    assert fetched == sorted(fetched) and len(fetched) >= n_archived - 1
    # The startup mirrored where the walreceiver fetched from.
    states = [e["to"] for e in standby.events("recovery_state")]
    assert "streaming" in states
    assert {e["to"] for e in standby.events("wal_source")} >= {"archive", "stream"}
    check_segments_identical(standby, archive, os.path.join(primary.datadir, "pg_wal"))


class ReplaySampler:
    """Samples the startup's replay position (shared memory) every few ms, with the monotonic clock
    the events use."""

    def __init__(self, node, every: float = 0.005):
        self.node = node
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        sh = None
        while not self.stop.is_set():
            if sh is None:
                try:
                    sh = SharedState.attach(self.node.datadir)
                except Exception:  # noqa: BLE001 - not started yet
                    time.sleep(self.every)
                    continue
            self.samples.append((time.monotonic(), sh.recovery.get("replay_lsn")))
            time.sleep(self.every)
        if sh is not None:
            sh.close()

    def replay_after(self, mono: float) -> int | None:
        """An upper bound of the replay position at time mono: the first sample taken after it."""
        return next((lsn for t, lsn in self.samples if t >= mono), None)

    def __enter__(self) -> "ReplaySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def archive_catchup_setup(nodes, tmp_path, prefetch: int, rows: int):
    """A primary that archived `rows` 1000-byte rows (about one segment a thousand), and a standby
    not started yet that can only restore them (50 ms restore_command, no primary to stream from)."""
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, start=False, archive=archive, standby_wal_coordination=COORD,
                            restore_command=f"sleep 0.05; cp {archive}/%f %p", walreceiver_restore_prefetch=prefetch,
                            primary_conninfo=dead_conninfo())
    write_rows(primary, 0, rows, size=1000, switch_every=0)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    assert len(archived(archive)) >= rows // 1000
    return primary, archive, standby


@pytest.mark.timeout(240)
def test_prefetch_restores_ahead_of_replay(nodes, tmp_path):
    primary, archive, standby = archive_catchup_setup(nodes, tmp_path, 4, 12000)
    with ReplaySampler(standby) as sampler:
        standby.start(wait_ready=False)
        wait_for(lambda: count_rows(standby) == 12000, 120, "the standby to replay the archive")
    restores = [e for e in assert_only_walreceiver_restored(standby) if e["ok"] and len(e["file"]) == 24]
    # Several restore_command processes ran at once.
    intervals = sorted((e["mono"] - e["seconds"], e["mono"]) for e in restores)
    overlap = max(sum(1 for s, t in intervals if s <= start < t) for start, _ in intervals)
    assert overlap >= 3, f"at most {overlap} restores ran at once"
    # Segment k's restore launched while the startup still replayed segment k-2 or earlier
    # (its replay_lsn, read from shared memory at the launch), or completed while it did.
    ahead = []
    for e in restores:
        segno = parse_segment_name(e["file"], SEG)[1]
        at_launch = parse_lsn(e["startup_replay"])
        replay = sampler.replay_after(e["mono"])
        if at_launch < segment_start(segno - 1, SEG) or (replay and replay < segment_start(segno - 1, SEG)):
            ahead.append((e["file"], e["startup_replay"]))
    assert len(ahead) >= 3, f"restores ahead of replay: {ahead}"
    # Published in order, each segment once.
    fetched = [e["file"] for e in standby.events("segment_fetched") if e.get("by") == "walreceiver"]
    assert fetched == sorted(set(fetched))
    check_segments_identical(standby, archive)


@pytest.mark.timeout(240)
def test_prefetch_zero_restores_only_what_the_startup_waits_for(nodes, tmp_path):
    """walreceiver_restore_prefetch = 0 means no segment restored ahead: each restore
    begins after the startup first waited for that segment (its wal_wait event)."""
    _primary, _archive, standby = archive_catchup_setup(nodes, tmp_path, 0, 8000)
    standby.start(wait_ready=False)
    wait_for(lambda: count_rows(standby) == 8000, 120, "the standby to replay the archive")
    waited = {}
    for e in standby.events("wal_wait"):
        waited.setdefault(e["segno"], e["mono"])
    restores = [e for e in assert_only_walreceiver_restored(standby) if e["ok"] and len(e["file"]) == 24]
    assert len(restores) >= 8
    early = []
    for e in restores:
        segno = parse_segment_name(e["file"], SEG)[1]
        began = e["mono"] - e["seconds"]
        if segno not in waited or began < waited[segno]:
            early.append((e["file"], round(waited.get(segno, 0) - began, 3)))
    assert not early, f"restored before the startup needed them (file, seconds early): {early}"
    # Nor launched while the startup was a segment or more behind it.
    assert all(parse_lsn(e["startup_replay"]) >= segment_start(parse_segment_name(e["file"], SEG)[1] - 1, SEG)
               for e in restores[1:]), [(e["file"], e["startup_replay"]) for e in restores]
    # Never two at once.
    spans = sorted((e["mono"] - e["seconds"], e["mono"]) for e in restores)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))


@pytest.mark.timeout(240)
def test_walreceiver_killed_mid_restore(nodes, tmp_path):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100)
    standby = nodes.standby(primary, start=False, archive=archive, standby_wal_coordination=COORD,
                            restore_command=f"sleep 0.3; cp {archive}/%f %p")
    write_rows(primary, 100, 500, size=1000, switch_every=200)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    primary.stop("fast")
    standby.start(wait_ready=False)
    watch = ReplayWatch(standby)

    # Wait until a walreceiver is inside a restore (its restore_command runs), then kill it.
    def restoring() -> psutil.Process | None:
        for p in standby.processes():
            if " ".join(p.cmdline()).startswith("walswitch: walreceiver"):
                try:
                    if any(c.name() in ("sh", "sleep", "cp") for c in p.children(recursive=True)):
                        return p
                except psutil.NoSuchProcess:
                    return None
        return None
    victim = wait_for(restoring, 30, "a walreceiver running restore_command")
    victim.kill()
    wait_for(lambda: standby.events("crash_restart"), 30, "crash-restart after the walreceiver was killed")
    exits = [e for e in standby.events("child_exit") if e["child_pid"] == victim.pid]
    assert exits and exits[0]["signal"] == 9
    # A new walreceiver restores again, and the standby replays everything.
    wait_for(lambda: count_rows(standby) == 600, 90, "the standby to replay the archive after the crash")
    watch.sample()
    assert len(pids_of(standby, "walreceiver")) >= 2
    primary.start()
    write_rows(primary, 600, 100)
    wait_streaming(standby, 30)
    check_data_equal(primary, standby)
    watch.sample()
    assert_only_walreceiver_restored(standby)
    check_segments_identical(standby, archive, os.path.join(primary.datadir, "pg_wal"))
    # No restore's temporary file is left in pg_wal.
    wait_for(lambda: not [f for f in os.listdir(os.path.join(standby.datadir, "pg_wal"))
                          if f.startswith("RECOVERYXLOG")], 10, "temporary restore files to be gone")
