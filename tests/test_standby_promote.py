"""Issue 3, item 5: promotion three ways, and a second standby that follows the new timeline.

The follower is PostgreSQL's 004_timeline_switch in our terms: two standbys of
one primary; the primary stops, standby 1 is promoted, standby 2 is pointed
at standby 1 and, with recovery_target_timeline = latest, moves to timeline 2
through the archive (the history file) and streaming.
"""
from __future__ import annotations

import os

import pytest

from tests.cluster import wait_for
from tests.invariants import check_data_equal, wait_streaming
from tests.standby_helpers import make_primary, write_rows
from xlog.lsn import history_file_name


def promote(node, how: str) -> None:
    if how == "cli":
        from tests.cluster import walswitch
        walswitch("promote", "-D", node.datadir)
    elif how == "trigger":
        with open(os.path.join(node.datadir, "trigger.now"), "w"):
            pass
    elif how == "sql":
        assert node.sql("SELECT pg_promote()") == [(True,)]
    wait_for(lambda: node.status()["mode"] == "primary" and node.status()["pm_status"] == "ready", 60,
             f"{node.name} to be promoted")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["cli", "trigger", "sql"])
def test_promote(nodes, tmp_path, how):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100)
    standby = nodes.standby(primary, archive=archive, archive_mode="on",
                            archive_command=f"cp %p {archive}/%f", promote_trigger_file="trigger.now")
    wait_streaming(standby, 60)
    check_data_equal(primary, standby)
    primary.stop("fast")
    promote(standby, how)
    assert standby.sql("SELECT pg_is_in_recovery()") == [(False,)]
    write_rows(standby, 1000, 50)
    assert standby.sql("SELECT count(*) FROM kv") == [(150,)]
    assert not os.path.exists(os.path.join(standby.datadir, "standby.signal"))
    wait_for(lambda: os.path.exists(os.path.join(archive, history_file_name(2))), 30,
             "the new timeline's history file in the archive")
    with open(os.path.join(archive, history_file_name(2))) as f:
        line = f.read().splitlines()[0]
    assert line.startswith("1\t") and line.endswith("no recovery target specified")
    ev = standby.events("promoted")
    assert ev and ev[0]["tli"] == 2
    assert standby.status()["timeline"] == 2


@pytest.mark.timeout(240)
def test_second_standby_follows_new_timeline(nodes, tmp_path):
    primary, archive = make_primary(nodes, tmp_path)
    write_rows(primary, 0, 100)
    s1 = nodes.standby(primary, "standby1", archive=archive, archive_mode="on",
                       archive_command=f"cp %p {archive}/%f")
    s2 = nodes.standby(primary, "standby2", archive=archive, recovery_target_timeline="latest")
    wait_streaming(s1, 60)
    wait_streaming(s2, 60)
    write_rows(primary, 100, 100)
    check_data_equal(primary, s1)
    check_data_equal(primary, s2)
    primary.stop("fast")
    promote(s1, "cli")
    write_rows(s1, 1000, 200, switch_every=100)
    # Point standby 2 at the new primary, as one would with primary_conninfo.
    s2.stop("fast")
    s2.set_conf(primary_conninfo=s1.dsn())
    s2.start(wait_ready=False)
    wait_for(lambda: s2.status()["timeline"] == 2, 60, "standby2 to move to timeline 2")
    wait_streaming(s2, 60)
    write_rows(s1, 2000, 100)
    check_data_equal(s1, s2)
    assert any(e["tli"] == 2 for e in s2.events("timeline_switch_target"))
