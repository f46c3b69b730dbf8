"""Issue 3, item 6: bad input on a standby, each a clear error and nothing lost.

* a primary with another system identifier: the standby never writes its WAL and keeps to the archive;
* a restore_command that returns a file of the wrong size: not used;
* a restore_command killed by a signal, or exiting 127: FATAL, as PostgreSQL;
* a corrupt segment in the archive: rejected by its CRC; the standby waits for good WAL from the stream;
* bad settings: one line naming the setting.
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.cluster import walswitch, wait_for
from tests.invariants import check_data_equal, check_segments_identical, wait_streaming
from tests.standby_helpers import COORDINATIONS, archived, make_primary, wait_archived, write_rows

SEG = 1024 * 1024


def no_traceback(node) -> None:
    assert "Traceback" not in node.log_text(), node.log_text()[-3000:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_primary_with_other_system_identifier(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 200, switch_every=100)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive)
    wait_archived(primary)
    other = nodes.primary("other")
    write_rows(other, 0, 50)
    standby.set_conf(primary_conninfo=other.dsn())
    before = set(os.listdir(os.path.join(standby.datadir, "pg_wal")))
    standby.start(wait_ready=False)
    standby.wait_log("database system identifier differs between the primary and standby", 30)
    standby.wait_log("DETAIL:  The primary's identifier is", 5)
    # It keeps to the archive: everything archived is replayed, nothing streamed from the stranger.
    check_data_equal(primary, standby)
    streamed = [e for e in standby.events("segment_completed") if e.get("source") == "stream"]
    assert not streamed
    after = set(os.listdir(os.path.join(standby.datadir, "pg_wal")))
    for name in after - before:
        assert name in archived(archive) or not name.startswith("0000"), f"{name} did not come from the archive"
    assert standby.is_running() and not standby.events("crash")
    no_traceback(standby)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_wrong_size_file_not_used(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive,
                            restore_command=f"head -c 1000 {archive}/%f > %p")
    write_rows(primary, 0, 300, switch_every=100)
    wait_archived(primary)
    standby.start(wait_ready=False)
    standby.wait_log("has wrong size: 1000 instead of 1048576", 30)
    # Not used: the standby streams instead and ends up equal.
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    assert not [e for e in standby.events("restore") if e["ok"]]
    no_traceback(standby)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command,expect", [
    ("kill -9 $$", "child process was terminated by signal 9"),
    ("exec /nonexistent/restore-tool %f %p", "child process exited with exit code 127"),
])
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_fatal_restore_command(nodes, tmp_path, coordination, command, expect):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100, switch_every=50)
    wait_archived(primary)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive, restore_command=command)
    standby.start(wait_ready=False, check=False)
    wait_for(lambda: not standby.is_running(), 30, "the standby to stop after a FATAL restore")
    log = standby.log_text()
    assert "FATAL:  could not restore file" in log and expect in log, log[-2000:]
    assert "shutting down due to startup process failure" in log or "aborting startup" in log
    no_traceback(standby)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("coordination", COORDINATIONS)
def test_corrupt_segment_in_archive(nodes, tmp_path, coordination):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, standby_wal_coordination=coordination, start=False, archive=archive)
    write_rows(primary, 0, 400, switch_every=100)
    primary.sql("SELECT pg_switch_wal()")
    wait_archived(primary)
    names = archived(archive)
    victim = names[-2]
    data = bytearray(open(os.path.join(archive, victim), "rb").read())
    for off in range(20_000, 21_000):
        data[off] ^= 0x5A
    with open(os.path.join(archive, victim), "wb") as f:
        f.write(data)
    standby.start(wait_ready=False)
    wait_for(lambda: standby.events("wal_invalid"), 60, "the corrupt segment to be rejected")
    bad = standby.events("wal_invalid")[0]
    assert "checksum" in bad["error"] or "invalid" in bad["error"], bad
    # Good WAL from another source: the stream (the primary still has the segment).
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    pg_wal_copy = tmp_path / "primary-wal"
    shutil.copytree(os.path.join(primary.datadir, "pg_wal"), pg_wal_copy)
    with open(os.path.join(standby.datadir, "pg_wal", victim), "rb") as f:
        assert f.read() != bytes(data), "the corrupt archive copy stayed in pg_wal"
    no_traceback(standby)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting,value,needle", [
    ("standby_wal_coordination", "sometimes", 'invalid value for parameter "standby_wal_coordination"'),
    ("wal_retrieve_retry_interval", "soon", 'invalid value for parameter "wal_retrieve_retry_interval"'),
    ("walreceiver_restore_prefetch", "-1", 'parameter "walreceiver_restore_prefetch"'),
])
def test_bad_standby_settings(nodes, tmp_path, setting, value, needle):
    primary, archive = make_primary(nodes, tmp_path)
    standby = nodes.standby(primary, start=False, archive=archive)
    standby.set_conf(**{setting: value})
    r = walswitch("start", "-D", standby.datadir, "--detach", check=False)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "walswitch.conf" in lines[0], r.stderr
    assert not standby.is_running()
