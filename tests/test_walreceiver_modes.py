"""The walreceiver's side of the three approaches, on its own (``ReceiverEnv`` plays the startup).

concurrent: it stays and reconnects (at the segment start of max(flushed,
replay)), a foreign primary is still FATAL, the concurrent guard (in-place
writes vs. the naive replace), ``writing_segno``.  walreceiver_restores: it
restores in order, publishes each segment, marks ``.done``, retries per
interval, restores on demand (prefetch N: N segments beyond the startup's
position, 1 + N at once), honours a refetch request (RESTARTING), a fatal
restore_command ends it, it fetches the next timeline's history file.
Injection points armed at run time.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil
import pytest

from shmem.states import WalRcvState, WalSource
from tests.cluster import free_port, wait_for
from tests.test_walreceiver import (SEGSIZE, fatal_lines, first_segment_start, receiver_env,  # noqa: F401
                                    walsender_slots, write_rows)
from utils.inject import arm, release
from xlog.control import read_control, write_control
from xlog.lsn import format_lsn, segment_name, segment_start


def scratch_control(env, tmp_path) -> None:
    """A control file for a walreceiver that never meets a primary."""
    from walswitch.initdb import initdb
    d = str(tmp_path / f"scratch-{os.path.basename(env.datadir)}")
    initdb(d, 1)
    write_control(env.datadir, read_control(d))


def fake_archive(path: Path, tli: int, first: int, n: int) -> list[str]:
    """n segment-sized files with distinct contents (the walreceiver does not parse what it restores)."""
    path.mkdir(exist_ok=True)
    names = []
    for segno in range(first, first + n):
        name = segment_name(tli, segno, SEGSIZE)
        (path / name).write_bytes(bytes([segno % 251]) * SEGSIZE)
        names.append(name)
    return names


def archive_receiver(receiver_env, tmp_path, restore_command: str, **settings):
    """A walreceiver environment under walreceiver_restores with no primary: it can only restore."""
    env = receiver_env(None, conninfo="", standby_wal_coordination="walreceiver_restores",
                       restore_command=restore_command, recovery_target_timeline="current", **settings)
    scratch_control(env, tmp_path)
    return env


def restores(env, ok: bool | None = None) -> list[dict]:
    return [e for e in env.events_of("restore") if ok is None or e["ok"] == ok]


# ---------------------------------------------------------------- concurrent
@pytest.mark.timeout(120)
def test_concurrent_reconnects_at_max_of_flushed_and_replay(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    write_rows(primary, 0, 600, size=1500, switch_every=200)
    env = receiver_env(primary, standby_wal_coordination="concurrent", wal_retrieve_retry_interval="200ms")
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    assert env.walrcv()["fetch_source"] == WalSource.STREAM
    primary.stop("fast")
    wait_for(lambda: env.state() == WalRcvState.STARTING and env.events_of("walreceiver_disconnect"), 20,
             "the stream lost")
    assert env.walrcv()["fetch_source"] == WalSource.NONE and env.walrcv()["writing_segno"] == -1
    flushed = env.flushed()
    assert env.events_of("walreceiver_disconnect")[0]["flushed_lsn"] == format_lsn(flushed)
    # The startup replayed further than we flushed (it restored from the archive meanwhile).
    expect = segment_start(flushed // SEGSIZE + 1, SEGSIZE)
    env.shared.recovery.update(replay_lsn=expect + 100, timeline=1)
    # Attempts 50 ms after the loss, doubling up to the 200 ms retry interval; five span more than one
    # interval, so the failure has been logged at LOG once.
    wait_for(lambda: len(env.events_of("walreceiver_connect_failed")) >= 5, 20, "reconnect attempts")
    primary.start()
    write_rows(primary, 1000, 800, size=1500)    # the primary's WAL reaches past that point
    wait_for(lambda: len(env.events_of("walreceiver_connect")) >= 2, 30, "the walreceiver to reconnect")
    again = env.events_of("walreceiver_connect")[-1]
    assert again["start_lsn"] == format_lsn(expect)
    assert env.walrcv()["pid"] == pid and env.children[pid] is None
    text = env.log_text()
    assert not fatal_lines(text)
    assert "LOG:  could not connect to the primary server: " in text
    assert f"LOG:  started streaming WAL from primary at {format_lsn(expect)} on timeline 1" in text


@pytest.mark.timeout(90)
def test_concurrent_foreign_primary_is_still_fatal(nodes, receiver_env):
    primary = nodes.primary()
    theirs = read_control(primary.datadir).system_identifier
    env = receiver_env(primary, sysid=theirs + 1, standby_wal_coordination="concurrent")
    env.request(first_segment_start(primary), 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == ["database system identifier differs between the primary and standby"]
    assert not env.events_of("walreceiver_connect_failed")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("guard", [True, False])
def test_concurrent_guard_in_place_or_replace(nodes, receiver_env, guard):
    primary = nodes.primary()
    start = first_segment_start(primary)
    target = write_rows(primary, 0, 50)
    env = receiver_env(primary, standby_wal_coordination="concurrent", concurrent_guard=guard)
    # A copy of the segment is already in pg_wal (the startup restored it): same bytes, another inode.
    name = segment_name(1, start // SEGSIZE, SEGSIZE)
    path = Path(env.pg_wal, name)
    path.write_bytes(Path(primary.datadir, "pg_wal", name).read_bytes())
    before = path.stat().st_ino
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.flushed() >= target, 20, "flush")
    w = env.walrcv()
    assert w["writing_segno"] == start // SEGSIZE
    replaced = env.events_of("segment_replaced")
    if guard:
        assert path.stat().st_ino == before, "the guard let an existing segment be replaced"
        assert not replaced
    else:
        assert path.stat().st_ino != before, "without the guard the segment is created anew (os.replace)"
        assert [e["file"] for e in replaced] == [name]
    n = target - start
    assert path.read_bytes()[:n] == Path(primary.datadir, "pg_wal", name).read_bytes()[:n]
    import signal
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    assert env.walrcv()["writing_segno"] == -1


# ---------------------------------------------------------------- walreceiver_restores
@pytest.mark.timeout(90)
def test_restores_in_order_marks_done_and_retries(receiver_env, tmp_path):
    archive = tmp_path / "archive"
    names = fake_archive(archive, 1, 3, 5)
    env = archive_receiver(receiver_env, tmp_path, f"cp {archive}/%f %p", wal_retrieve_retry_interval="300ms")
    env.request(segment_start(3, SEGSIZE), 1)
    pid = env.fork_walreceiver()
    end = segment_start(8, SEGSIZE)
    wait_for(lambda: env.flushed() == end, 20, "all five segments restored and published")
    wait_for(lambda: len(restores(env, ok=False)) >= 3, 20, "the missing segment asked for again")
    ok = restores(env, ok=True)
    assert [e["file"] for e in ok] == names
    assert all(e["by"] == "walreceiver" and e["pid"] == pid and e["bytes"] == SEGSIZE for e in ok)
    missing = segment_name(1, 8, SEGSIZE)
    failed = restores(env, ok=False)
    assert {e["file"] for e in failed} == {missing}
    assert all(e["exit"] == 1 and e["reason"] == "not found" for e in failed)
    gaps = [b["mono"] - a["mono"] for a, b in zip(failed, failed[1:])]
    assert all(g >= 0.3 * 0.95 for g in gaps), gaps
    fetched = env.events_of("segment_fetched")
    assert [e["file"] for e in fetched] == names and all(e["source"] == "archive" for e in fetched)
    for n in names:
        assert Path(env.pg_wal, n).read_bytes() == (archive / n).read_bytes()
        assert os.path.exists(os.path.join(env.pg_wal, "archive_status", n + ".done"))
    w = env.walrcv()
    assert w["written_lsn"] == end and w["received_tli"] == 1 and w["restore_ahead_lsn"] == end
    assert w["state"] == WalRcvState.STARTING and w["pid"] == pid
    assert "LOG:  restored log file \"000000010000000000000003\" from archive" in env.log_text()
    # More WAL in the archive: the next round takes it.
    fake_archive(archive, 1, 8, 1)
    wait_for(lambda: env.flushed() == segment_start(9, SEGSIZE), 10, "the late segment")
    assert not [f for f in os.listdir(env.pg_wal) if f.startswith("RECOVERYXLOG")]


@pytest.mark.timeout(90)
def test_restores_on_demand_and_prefetch(receiver_env, tmp_path):
    """prefetch N: at most N segments beyond where the startup is, up to 1 + N restores at once."""
    archive = tmp_path / "archive"
    fake_archive(archive, 1, 2, 20)
    env = archive_receiver(receiver_env, tmp_path, f"sleep 0.2; cp {archive}/%f %p", walreceiver_restore_prefetch=3)
    stop = threading.Event()
    replay = [segment_start(2, SEGSIZE)]

    def replaying() -> None:
        # A startup busy replaying segment 2 (its replay position keeps moving, inside segment 2).
        while not stop.is_set():
            replay[0] += 8
            env.shared.recovery.update(replay_lsn=replay[0])
            time.sleep(0.002)
    t = threading.Thread(target=replaying, daemon=True)
    t.start()

    def holding(segno: int) -> bool:
        title = " ".join(psutil.Process(pid).cmdline())
        return f"holding {segment_name(1, segno, SEGSIZE)} until the startup needs it" in title

    try:
        env.request(segment_start(2, SEGSIZE), 1)
        pid = env.fork_walreceiver()
        # Segments 2..5 (the startup's segment + 3), the last three at once; then it holds segment 6 back.
        wait_for(lambda: env.flushed() == segment_start(6, SEGSIZE) and holding(6), 20, "segments 2..5, then a hold")
        assert sorted(e["file"][-2:] for e in restores(env)) == ["02", "03", "04", "05"]
        ok = restores(env, ok=True)
        spans = sorted((e["mono"] - e["seconds"], e["mono"]) for e in ok if not e["file"].endswith("02"))
        assert max(s for s, _ in spans) < min(e for _, e in spans), "segments 3..5 were not restored at once"
        # The startup now waits at segment 6: up to 6 + 3 come, then it holds 10 back.
        env.shared.walrcv.update(startup_wait_lsn=segment_start(6, SEGSIZE))
        env.shared.latches["walreceiver"].set()
        wait_for(lambda: env.flushed() == segment_start(10, SEGSIZE) and holding(10), 20, "segments 6..9")
        assert sorted(e["file"][-2:] for e in restores(env))[-1] == "09"
    finally:
        stop.set()
        t.join()
    # A startup that stops moving (it waits for us, publishing nothing more): restores go on.
    wait_for(lambda: env.flushed() == segment_start(22, SEGSIZE), 30, "the rest, on demand")
    fetched = [e["file"] for e in env.events_of("segment_fetched")]
    assert fetched == sorted(set(fetched)) and len(fetched) == 20


@pytest.mark.timeout(90)
def test_restores_refetch_request(receiver_env, tmp_path):
    archive = tmp_path / "archive"
    fake_archive(archive, 1, 4, 4)
    env = archive_receiver(receiver_env, tmp_path, f"cp {archive}/%f %p", wal_retrieve_retry_interval="200ms")
    env.request(segment_start(4, SEGSIZE), 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.flushed() == segment_start(8, SEGSIZE), 20, "segments 4..7")
    # The startup found segment 5 corrupt: start again from it (as its request_refetch writes it).
    corrupt = segment_name(1, 5, SEGSIZE)
    Path(env.pg_wal, corrupt).write_bytes(b"\xee" * SEGSIZE)
    with env.shared.walrcv.locked() as w:
        w.set(receive_start=segment_start(5, SEGSIZE), receive_start_tli=1, state=int(WalRcvState.RESTARTING),
              flushed_lsn=segment_start(5, SEGSIZE))
    env.shared.latches["walreceiver"].set()
    wait_for(lambda: env.flushed() == segment_start(8, SEGSIZE) and
             len([e for e in restores(env, ok=True) if e["file"] == corrupt]) == 2, 20, "segment 5 fetched again")
    assert Path(env.pg_wal, corrupt).read_bytes() == (archive / corrupt).read_bytes()
    trans = [(e["from"], e["to"]) for e in env.events_of("walreceiver_state")]
    assert ("restarting", "starting") in trans
    assert env.walrcv()["pid"] == pid and env.children[pid] is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command,status", [("exit 127", "exited with exit code 127"),
                                            ("kill -9 $$", "was terminated by signal 9: Killed")])
def test_restores_fatal_restore_command(receiver_env, tmp_path, command, status):
    env = archive_receiver(receiver_env, tmp_path, command)
    env.request(segment_start(3, SEGSIZE), 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == [
        f'could not restore file "{segment_name(1, 3, SEGSIZE)}" from archive: child process {status}']
    assert (env.walrcv()["state"], env.walrcv()["pid"]) == (WalRcvState.STOPPED, 0)
    assert env.walrcv()["restore_fatal"] == 1


@pytest.mark.timeout(60)
def test_restores_fetches_next_timeline_history(receiver_env, tmp_path):
    archive = tmp_path / "archive"
    fake_archive(archive, 1, 3, 1)
    env = receiver_env(None, conninfo=f"host=127.0.0.1 port={free_port()} user=postgres",
                       standby_wal_coordination="walreceiver_restores", restore_command=f"cp {archive}/%f %p",
                       wal_retrieve_retry_interval="300ms", recovery_target_timeline="latest")
    scratch_control(env, tmp_path)
    env.shared.recovery.update(timeline=1)
    env.request(segment_start(3, SEGSIZE), 1)
    env.fork_walreceiver()
    wait_for(lambda: len([e for e in restores(env, ok=False) if e["file"] == "00000002.history"]) >= 3, 20,
             "the next timeline's history asked for")
    tries = [e["mono"] for e in restores(env, ok=False) if e["file"] == "00000002.history"]
    assert all(b - a >= 0.3 * 0.95 for a, b in zip(tries, tries[1:])), tries
    (archive / "00000002.history").write_text("1\t0/3800000\tno recovery target specified\n")
    wait_for(lambda: os.path.exists(os.path.join(env.pg_wal, "00000002.history")), 10, "the history file")
    wait_for(lambda: os.path.exists(os.path.join(env.pg_wal, "archive_status", "00000002.history.done")), 10,
             "the history file's .done")
    fetched = wait_for(lambda: env.events_of("history_fetched"), 10, "the history_fetched event")
    assert fetched[0]["source"] == "archive"
    # Then the one after it is looked for.
    wait_for(lambda: any(e["file"] == "00000003.history" for e in restores(env)), 10, "timeline 3's history")
    # Streaming was tried between archive rounds: the LOG line, no FATAL.
    assert "LOG:  could not connect to the primary server" in env.log_text()
    assert not fatal_lines(env.log_text())


# ---------------------------------------------------------------- injection points
@pytest.mark.timeout(90)
def test_injection_points_armed_at_run_time(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    env = receiver_env(primary)
    arm(env.datadir, "walreceiver_start", "pause")
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.events_of("inject_paused"), 10, "the walreceiver paused before connecting")
    assert env.state() == WalRcvState.STARTING and not env.events_of("walreceiver_connect")
    release(env.datadir, "walreceiver_start")
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "streaming after the release")
    # First all the WAL the primary has, so that the next flush is of the rows below.
    have = primary.flush_lsn()
    wait_for(lambda: env.flushed() >= have, 20, "the walreceiver to flush what the primary had")
    # Written, fsynced, not yet published: killed there, the flush position stays where it was.
    flushed = env.flushed()
    arm(env.datadir, "after_flush", "kill")
    write_rows(primary, 0, 20)
    assert env.wait_exit(pid) == -9
    hit = [e for e in env.events_of("inject") if e["point"] == "after_flush"]
    assert hit and hit[0]["pid"] == pid
    assert env.flushed() == flushed


@pytest.mark.timeout(90)
def test_force_reply_reports_at_once(nodes, receiver_env):
    """WalRcvForceReply: with periodic status updates off, a forced reply still reaches the primary."""
    primary = nodes.primary()
    env = receiver_env(primary, wal_receiver_status_interval=0, wal_receiver_timeout=0)
    env.request(first_segment_start(primary), 1)
    env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    marker = first_segment_start(primary) + 4242

    def primary_saw() -> bool:
        return any(s["replay_lsn"] == marker for s in walsender_slots(primary))
    env.shared.recovery.update(replay_lsn=marker)
    assert not primary_saw()
    env.shared.walrcv.update(force_reply=1)
    env.shared.latches["walreceiver"].set()
    wait_for(primary_saw, 10, "the primary to get our replay position")
    assert env.walrcv()["force_reply"] == 0


@pytest.mark.timeout(90)
def test_restores_foreign_primary_keeps_to_the_archive(nodes, receiver_env, tmp_path):
    """walreceiver_restores: a primary of another system makes the stream impossible, not the walreceiver exit."""
    primary = nodes.primary()
    theirs = read_control(primary.datadir).system_identifier
    archive = tmp_path / "archive"
    names = fake_archive(archive, 1, 3, 2)
    env = receiver_env(primary, sysid=theirs + 1, standby_wal_coordination="walreceiver_restores",
                       restore_command=f"cp {archive}/%f %p", wal_retrieve_retry_interval="300ms",
                       recovery_target_timeline="current")
    env.request(segment_start(3, SEGSIZE), 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.flushed() == segment_start(5, SEGSIZE), 20, "the archive restored")
    wait_for(lambda: env.log_text().count("database system identifier differs") >= 2, 20, "the stream retried")
    assert env.children[pid] is None and env.walrcv()["pid"] == pid
    assert not fatal_lines(env.log_text())
    assert "DETAIL:  The primary's identifier is" in env.log_text()
    assert [e["file"] for e in env.events_of("segment_fetched")] == names
    assert not env.events_of("walreceiver_connect") and not env.events_of("segment_completed")
