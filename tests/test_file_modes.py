"""Data directory 0700 and every file in it 0600, whatever the caller's umask (issue 10 item 6).

Checked after init, start and load, a base backup, promotion, log rotation; a start on a data directory
that others may read or write is refused with PostgreSQL's FATAL and DETAIL.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from tests.cluster import wait_for
from tests.invariants import wait_caught_up


def loose_modes(datadir: str) -> list[str]:
    """Paths below datadir whose mode is not 0700 (directories) or 0600 (files)."""
    bad = []
    for root, dirs, files in os.walk(datadir):
        for name in dirs + files + ([] if root != datadir else ["."]):
            path = os.path.normpath(os.path.join(root, name))
            st = os.lstat(path)
            want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                if stat.S_IMODE(st.st_mode) != want:
                    bad.append(f"{os.path.relpath(path, datadir)} {oct(stat.S_IMODE(st.st_mode))}")
    return bad


@pytest.fixture
def open_umask():
    old = os.umask(0o022)          # what a user's shell usually has: the server must not inherit it
    yield
    os.umask(old)


@pytest.mark.timeout(240)
def test_modes_after_init_start_basebackup_promotion_rotation(nodes, open_umask, tmp_path):
    empty = tmp_path / "existing"
    empty.mkdir(mode=0o755)
    empty.chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "walswitch.cli", "init", "-D", str(empty), "--wal-segsize", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert loose_modes(str(empty)) == []

    primary = nodes.primary()
    assert loose_modes(primary.datadir) == []
    primary.sql("INSERT INTO kv VALUES ('a', '1')")
    primary.sql("SELECT pg_switch_wal()")
    primary.sql("CHECKPOINT")
    assert loose_modes(primary.datadir) == []

    standby = nodes.standby(primary)
    wait_for(lambda: standby.status().get("walreceiver_state") == "streaming", 60, "standby streaming")
    wait_caught_up(primary, standby)
    assert loose_modes(standby.datadir) == []
    standby.sql("SELECT pg_promote()")
    wait_for(lambda: standby.status().get("mode") == "primary", 60, "promotion")
    standby.sql("INSERT INTO kv VALUES ('b', '2')")
    assert loose_modes(standby.datadir) == []
    # log rotation: the renamed file and the new walswitch.log (tests/test_log_rotation.py does more)
    standby.sql("SELECT pg_rotate_logfile()")
    wait_for(lambda: standby.events("log_rotated"), 30, "log rotation")
    assert os.path.exists(os.path.join(standby.datadir, "log", standby.events("log_rotated")[0]["file"]))
    assert loose_modes(standby.datadir) == []


@pytest.mark.timeout(120)
def test_start_refused_on_open_data_directory(nodes):
    n = nodes("open")
    n.init(1)
    os.chmod(n.datadir, 0o777)
    p = n.start(check=False, timeout=30)
    assert p.returncode != 0
    text = p.stderr + n.log_text()
    assert f'FATAL:  data directory "{n.datadir}" has invalid permissions' in text
    assert "DETAIL:  Permissions should be u=rwx (0700) or u=rwx,g=rx (0750)." in text
    assert not n.is_running()
    os.chmod(n.datadir, 0o750)          # group read is accepted, as PostgreSQL does
    n.start()
    assert n.sql("SELECT 1") == [(1,)]
