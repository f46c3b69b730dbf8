"""The archiver on its own (stand-in postmaster from test_walsender_harness.py)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from archiver.archiver import expand_command, ready_files
from tests.cluster import wait_for
from tests.test_walsender_harness import SEGSIZE, harness_factory  # noqa: F401
from xlog.lsn import segment_name


def make_segments(h, n: int) -> list[str]:
    """Write n complete segments (1..n) plus a partial one; mark the complete ones ready."""
    h.start_wal()
    for _ in range(n):
        h.write_bytes(SEGSIZE // 2)
        h.switch()
    names = [segment_name(1, s, SEGSIZE) for s in range(1, n + 1)]
    for name in names:
        h.mark_ready(name)
    return names


@pytest.mark.timeout(10)
def test_expand_command_and_order(tmp_path):
    assert expand_command("cp %p /a/%f && echo 100%% %x %", "pg_wal/X", "X") == "cp pg_wal/X /a/X && echo 100% %x %"
    d = tmp_path / "st"
    d.mkdir()
    for n in ("000000020000000000000003", "00000002.history", "000000010000000000000003",
              "000000010000000000000002.partial", "000000010000000000000001"):
        (d / (n + ".ready")).touch()
    (d / "000000010000000000000000.done").touch()
    assert ready_files(str(d)) == ["00000002.history", "000000010000000000000001",
                                   "000000010000000000000002.partial", "000000010000000000000003",
                                   "000000020000000000000003"]


@pytest.mark.timeout(60)
def test_archives_every_ready_file_byte_identical(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    h = harness_factory(archive_mode="on", archive_command=f"cp %p {archive}/%f")
    names = make_segments(h, 3)
    Path(h.pg_wal, "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    h.mark_ready("00000002.history")
    pid = h.start_archiver()
    wait_for(lambda: not ready_files(h.status_dir), 20, "all .ready files archived")
    for name in names + ["00000002.history"]:
        assert (archive / name).read_bytes() == Path(h.pg_wal, name).read_bytes()
        assert Path(h.status_dir, name + ".done").exists()
        assert Path(h.pg_wal, name).exists()          # the archiver never removes WAL
    a = h.shared.archiver.snapshot()
    assert a["archived_count"] == 4 and a["failed_count"] == 0 and a["pid"] == pid
    assert a["last_archived_wal"] == names[-1] and a["last_archived_time"] > 0
    archived = [e["file"] for e in h.events_of("archived")]
    assert archived == ["00000002.history"] + names      # history first, then oldest first
    # A segment completed later: the backend sets the latch, the archiver wakes at once.
    h.write_bytes(SEGSIZE // 2)
    h.switch()
    later = segment_name(1, 4, SEGSIZE)
    h.mark_ready(later)
    h.shared.latches["archiver"].set()
    wait_for(lambda: (archive / later).exists() and not ready_files(h.status_dir), 5, "the new segment archived")
    os.kill(pid, signal.SIGTERM)
    assert h.wait_exit(pid) == 0
    assert h.shared.archiver.get("pid") == 0


@pytest.mark.timeout(60)
def test_failing_command_is_retried_and_ready_stays(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    gate = tmp_path / "allow"
    cmd = f"test -f {gate} && cp %p {archive}/%f"
    h = harness_factory(archive_mode="on", archive_command=cmd)
    names = make_segments(h, 2)
    pid = h.start_archiver()
    wait_for(lambda: h.shared.archiver.get("failed_count") >= 3, 20, "three failed attempts")
    assert ready_files(h.status_dir) == names
    assert not list(archive.iterdir())
    a = h.shared.archiver.snapshot()
    assert a["last_failed_wal"] == names[0] and a["archived_count"] == 0
    log = h.log_text()
    assert "LOG:  archive command failed with exit code 1" in log
    expanded = f"test -f {gate} && cp pg_wal/{names[0]} {archive}/{names[0]}"
    assert f"DETAIL:  The failed archive command was: {expanded}" in log
    assert f'WARNING:  archiving write-ahead log file "{names[0]}" failed too many times, will try again later' in log
    failed = h.events_of("archive_failed")
    assert failed[0]["file"] == names[0] and failed[0]["exit_code"] == 1 and not failed[0]["fatal"]
    # Back-off grows (1 s, 2 s, ...) but stays bounded; the retry comes by itself.
    gate.touch()
    wait_for(lambda: not ready_files(h.status_dir), 15, "archiving to succeed after the gate opened")
    for name in names:
        assert (archive / name).read_bytes() == Path(h.pg_wal, name).read_bytes()
    os.kill(pid, signal.SIGUSR2)
    assert h.wait_exit(pid) == 0


@pytest.mark.timeout(30)
def test_latch_cuts_the_backoff_short(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    gate = tmp_path / "allow"
    h = harness_factory(archive_mode="on", archive_command=f"test -f {gate} && cp %p {archive}/%f")
    make_segments(h, 1)
    pid = h.start_archiver()
    wait_for(lambda: h.shared.archiver.get("failed_count") >= 4, 20, "four failures (back-off now 8 s)")
    gate.touch()
    import time
    t0 = time.monotonic()
    h.shared.latches["archiver"].set()
    wait_for(lambda: not ready_files(h.status_dir), 5, "archived right after the latch")
    assert time.monotonic() - t0 < 3
    os.kill(pid, signal.SIGTERM)
    assert h.wait_exit(pid) == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("command,wording,fields", [
    ("exit 127", "archive command failed with exit code 127", {"exit_code": 127}),
    ("nonexistent_command_xyz %p", "archive command failed with exit code 127", {"exit_code": 127}),
    ("kill -9 $$", "archive command was terminated by signal 9: Killed", {"signal": 9}),
    ("sh -c 'kill -TERM $$'", "archive command failed with exit code 143", {"exit_code": 143}),
])
def test_fatal_archive_command_exits_archiver(harness_factory, command, wording, fields):
    h = harness_factory(archive_mode="on", archive_command=command)
    names = make_segments(h, 1)
    pid = h.start_archiver()
    assert h.wait_exit(pid) == 1          # FATAL: the postmaster starts a new archiver
    assert f"FATAL:  {wording}" in h.log_text()
    assert "DETAIL:  The failed archive command was:" in h.log_text()
    ev = h.events_of("archive_failed")[-1]
    assert ev["fatal"] is True and all(ev[k] == v for k, v in fields.items())
    assert ready_files(h.status_dir) == names


@pytest.mark.timeout(30)
def test_sigusr2_archives_everything_then_exits(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    slow = f"sleep 0.2 && cp %p {archive}/%f"
    h = harness_factory(archive_mode="on", archive_command=slow)
    names = make_segments(h, 4)
    pid = h.start_archiver()
    wait_for(lambda: h.events_of("archived"), 10, "first file archived")
    os.kill(pid, signal.SIGUSR2)
    assert h.wait_exit(pid) == 0
    assert sorted(p.name for p in archive.iterdir()) == names
    assert not ready_files(h.status_dir)


@pytest.mark.timeout(30)
def test_sigterm_finishes_current_command_only(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    started = tmp_path / "started"
    slow = f"touch {started}; sleep 1 && cp %p {archive}/%f"
    h = harness_factory(archive_mode="on", archive_command=slow)
    names = make_segments(h, 3)
    pid = h.start_archiver()
    wait_for(lambda: started.exists(), 10, "the first command to start")
    os.kill(pid, signal.SIGTERM)
    assert h.wait_exit(pid) == 0
    assert [p.name for p in archive.iterdir()] == names[:1]     # the running one finished
    assert ready_files(h.status_dir) == names[1:]


@pytest.mark.timeout(30)
def test_orphan_ready_file_removed_and_no_command(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    h = harness_factory(archive_mode="on", archive_command="")
    names = make_segments(h, 1)
    h.mark_ready("000000010000000000000000")      # no such segment
    pid = h.start_archiver()
    wait_for(lambda: "archive_mode enabled, yet archive_command is not set" in h.log_text(), 10, "warning")
    os.kill(pid, signal.SIGTERM)
    assert h.wait_exit(pid) == 0
    h.write_conf(archive_mode="on", archive_command=f"cp %p {archive}/%f", max_wal_senders=3)
    from utils import config as cfgmod
    h.config = cfgmod.load(h.datadir)
    pid = h.start_archiver()
    wait_for(lambda: not ready_files(h.status_dir), 10, "archived")
    assert 'removed orphan archive status file "pg_wal/archive_status/000000010000000000000000.ready"' in h.log_text()
    assert [p.name for p in archive.iterdir()] == names
    h.postmaster_death()                         # the archiver leaves
    assert h.wait_exit(pid) == 1


@pytest.mark.timeout(30)
def test_sighup_rereads_archive_command(harness_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    h = harness_factory(archive_mode="on", archive_command="false")
    names = make_segments(h, 2)
    pid = h.start_archiver()
    wait_for(lambda: h.shared.archiver.get("failed_count") >= 2, 20, "failures with the broken command")
    h.write_conf(archive_mode="on", archive_command=f"cp %p {archive}/%f", max_wal_senders=3)
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: not ready_files(h.status_dir), 5, "the corrected command to run at once")
    assert sorted(p.name for p in archive.iterdir()) == names
    os.kill(pid, signal.SIGTERM)
    assert h.wait_exit(pid) == 0
