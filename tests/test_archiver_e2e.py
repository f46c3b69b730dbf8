"""Archiver end to end: real ``walswitch start`` primaries (tests/cluster.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from archiver.archiver import ready_files
from tests.cluster import wait_for
from xlog.lsn import is_segment_name


def load(node, n: int, switch_every: int) -> None:
    with node.connect() as c, c.cursor() as cur:
        for i in range(n):
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"key{i:06d}", "y" * 200))
            if i % switch_every == switch_every - 1:
                cur.execute("SELECT pg_switch_wal()")


def status_dir(node) -> str:
    return str(Path(node.datadir, "pg_wal", "archive_status"))


@pytest.mark.timeout(120)
def test_every_completed_segment_reaches_the_archive_byte_identical(nodes, tmp_path):
    arch = tmp_path / "archive"
    arch.mkdir()
    p = nodes.primary(archive_mode="on", archive_command=f"cp %p {arch}/%f", wal_keep_size="256MB")
    load(p, 600, switch_every=100)
    pg_wal = Path(p.datadir, "pg_wal")
    wait_for(lambda: not ready_files(status_dir(p)) and len(list(arch.iterdir())) >= 6, 30,
             "all completed segments archived")
    archived = sorted(f.name for f in arch.iterdir())
    for name in archived:
        assert (arch / name).read_bytes() == (pg_wal / name).read_bytes(), name
        assert Path(status_dir(p), name + ".done").exists()
    events = [e["file"] for e in p.events("archived")]
    assert events == sorted(events)                      # oldest first
    st = p.status()
    assert st["postmaster_pid"]
    p.stop("fast")
    # At shutdown the archiver archives what the shutdown made ready.
    assert not ready_files(status_dir(p))


@pytest.mark.timeout(120)
def test_failing_archive_command_is_retried_and_wal_kept_until_it_succeeds(nodes, tmp_path):
    arch = tmp_path / "archive"
    arch.mkdir()
    gate = tmp_path / "allow"
    p = nodes.primary(archive_mode="on", archive_command=f"test -f {gate} && cp %p {arch}/%f",
                      wal_keep_size=0)
    load(p, 300, switch_every=100)
    pg_wal = Path(p.datadir, "pg_wal")
    wait_for(lambda: len(p.events("archive_failed")) >= 2, 30, "archive_command failures")
    pending = ready_files(status_dir(p))
    assert len(pending) >= 3
    p.psql("CHECKPOINT")
    # Nothing waiting for the archive may be removed by the checkpoint.
    for name in pending:
        assert (pg_wal / name).exists(), f"{name} removed before it was archived"
    copies = {name: (pg_wal / name).read_bytes() for name in pending}
    assert "archive command failed with exit code 1" in p.log_text()
    gate.touch()
    wait_for(lambda: all((arch / n).exists() for n in pending), 30, "the retry to archive everything")
    for name, data in copies.items():
        got = (arch / name).read_bytes()
        if got != data:
            diff = [i for i in range(len(data)) if got[i] != data[i]]
            raise AssertionError(f"{name} differs at {len(diff)} bytes from {diff[0]:#x} to {diff[-1]:#x}; "
                                 f"pending={pending}; files={sorted(x.name for x in pg_wal.iterdir())}")
    wait_for(lambda: not set(pending) & set(ready_files(status_dir(p))), 10, ".ready renamed to .done")
    # Now a checkpoint may remove them.
    load(p, 10, switch_every=5)
    p.psql("CHECKPOINT")
    wait_for(lambda: not any((pg_wal / n).exists() for n in pending), 20, "archived segments recycled")
    assert all(is_segment_name(n) for n in pending)
