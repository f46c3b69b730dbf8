"""Rotation of log/walswitch.log by the postmaster (postmaster/syslogger.py), as PostgreSQL's syslogger.

pg_rotate_logfile() (superusers only), ``walswitch logrotate -D DIR`` (pg_ctl logrotate) and
log_rotation_size each rename the current file to walswitch-YYYY-MM-DD_HHMMSS.log and continue in a new
walswitch.log; both 0600 in a 0700 directory, and no line is lost or split across a rotation.

A marker line is a failed connection: the backend (a child, so through the log queue) logs
``FATAL:  role "<marker>" does not exist``.  Waits are on the ``log_rotated`` event and on log lines.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from postmaster.syslogger import LogRotation, next_rotation_time
from tests.cluster import run_in_thread, wait_for, walswitch
from tests.test_file_modes import loose_modes
from utils.config import SETTINGS, Config
from utils.elog import log_files, rotated_path
from utils.events import EventLog

LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} UTC \[\d+\] [A-Z]+:  ")


def marker(n, name: str) -> None:
    """One FATAL line naming ``name`` in n's log, written by the backend."""
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(n.dsn(user=name)).close()


def fatal_of(name: str) -> str:
    return f'FATAL:  role "{name}" does not exist'


def current_log(n) -> str:
    return Path(n.datadir, "log", "walswitch.log").read_text(errors="replace")


def rotations(n, at_least: int, timeout: float = 30.0) -> list[dict]:
    return wait_for(lambda: (evs := n.events("log_rotated")) and len(evs) >= at_least and evs, timeout,
                    f"{at_least} log rotation(s) in {n.name}")


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def check_modes(n) -> None:
    logdir = os.path.join(n.datadir, "log")
    assert mode(logdir) == 0o700
    for p in log_files(n.datadir):
        assert mode(p) == 0o600, p
    assert loose_modes(n.datadir) == []


@pytest.mark.timeout(120)
def test_pg_rotate_logfile_superuser_only(nodes):
    p = nodes.primary()
    marker(p, "before_rotation")
    p.wait_log(fatal_of("before_rotation"))
    assert p.sql("SELECT pg_rotate_logfile()") == [(True,)]
    ev = rotations(p, 1)[0]
    assert ev["reason"] == "requested" and re.fullmatch(r"walswitch-\d{4}-\d{2}-\d{2}_\d{6}\.log", ev["file"])
    old = Path(p.datadir, "log", ev["file"])
    assert fatal_of("before_rotation") in old.read_text()
    assert "database system is ready to accept connections" in old.read_text()
    marker(p, "after_rotation")
    wait_for(lambda: fatal_of("after_rotation") in current_log(p), 30, "the later line in the new file")
    assert fatal_of("before_rotation") not in current_log(p)
    assert fatal_of("after_rotation") not in old.read_text()
    assert log_files(p.datadir) == [str(old), os.path.join(p.datadir, "log", "walswitch.log")]
    check_modes(p)
    # Only the postmaster holds the log open, and only the new file: the children, forked before the
    # rotation, pointed their inherited descriptor at /dev/null (a removed rotated file frees its space).
    holders = {}
    for proc in p.processes():
        for f in proc.open_files():
            if f.path.startswith(os.path.join(p.datadir, "log", "walswitch")):
                holders.setdefault(f.path, set()).add(" ".join(proc.cmdline()).split(" ")[1])
    assert holders == {os.path.join(p.datadir, "log", "walswitch.log"): {"postmaster"}}

    # Not a superuser: PostgreSQL's 42501 (EXECUTE is revoked from public), and nothing is asked for.
    p.sql("CREATE ROLE alice LOGIN")
    with contextlib.closing(p.connect(user="alice")) as c, c.cursor() as cur:
        with pytest.raises(psycopg2.Error) as e:
            cur.execute("SELECT pg_rotate_logfile()")
    assert e.value.pgcode == "42501"
    assert "permission denied for function pg_rotate_logfile" in str(e.value)
    # A second rotation gets a file of its own (a counter when in the same second); the first is kept.
    assert p.sql("SELECT pg_rotate_logfile()") == [(True,)]
    evs = rotations(p, 2)
    assert len(evs) == 2 and evs[1]["file"] != ev["file"]
    assert old.exists() and fatal_of("before_rotation") in old.read_text()
    check_modes(p)
    # Removed by hand: a rotation opens a new one (nothing to rename), and lines land in it again.
    os.unlink(os.path.join(p.datadir, "log", "walswitch.log"))
    assert p.sql("SELECT pg_rotate_logfile()") == [(True,)]
    wait_for(lambda: os.path.exists(os.path.join(p.datadir, "log", "walswitch.log")), 30, "a new walswitch.log")
    marker(p, "after_removal")
    wait_for(lambda: fatal_of("after_removal") in current_log(p), 30, "the line in the new file")
    assert len(p.events("log_rotated")) == 2
    check_modes(p)


@pytest.mark.timeout(120)
def test_walswitch_logrotate_command(nodes):
    p = nodes.primary()
    marker(p, "before_logrotate")
    p.wait_log(fatal_of("before_logrotate"))
    r = walswitch("logrotate", "-D", p.datadir)
    assert r.stdout.strip() == "server signaled to rotate log file"
    ev = rotations(p, 1)[0]
    assert ev["reason"] == "requested"
    assert not os.path.exists(os.path.join(p.datadir, "logrotate"))      # the postmaster removed it
    old = Path(p.datadir, "log", ev["file"])
    assert fatal_of("before_logrotate") in old.read_text()
    marker(p, "after_logrotate")
    wait_for(lambda: fatal_of("after_logrotate") in current_log(p), 30, "the later line in the new file")
    assert fatal_of("before_logrotate") not in current_log(p)
    check_modes(p)
    p.stop()
    r = walswitch("logrotate", "-D", p.datadir, check=False)
    assert r.returncode == 1
    assert "walswitch logrotate: error: PID file" in r.stderr and "is server running?" in r.stderr


@pytest.mark.timeout(120)
def test_rotation_after_a_crash_restart(nodes):
    """A crash-restart gives the postmaster a new log queue (elog.restart_queue); the file and its
    rotation stay the postmaster's."""
    p = nodes.primary()
    p.kill9("backend")
    wait_for(lambda: p.events("crash_restart"), 30, "the crash-restart")
    wait_for(lambda: p.sql("SELECT 1") == [(1,)], 60, "the server back")
    marker(p, "after_restart")
    p.wait_log(fatal_of("after_restart"))
    assert p.sql("SELECT pg_rotate_logfile()") == [(True,)]
    ev = rotations(p, 1)[0]
    assert fatal_of("after_restart") in Path(p.datadir, "log", ev["file"]).read_text()
    marker(p, "after_rotation")
    wait_for(lambda: fatal_of("after_rotation") in current_log(p), 30, "the later line in the new file")
    check_modes(p)


def flood(n, names: list[str], stop: threading.Event | None = None) -> list[str]:
    """Log the markers one after the other (until ``stop``); return those sent."""
    sent = []
    for name in names:
        if stop is not None and stop.is_set():
            break
        marker(n, name)
        sent.append(name)
    return sent


def check_all_once(n, names: list[str]) -> None:
    """Every marker's line exactly once across the files, and every line whole."""
    texts = [Path(f).read_text() for f in log_files(n.datadir)]
    text = "".join(texts)
    for name in names:
        assert text.count(fatal_of(name)) == 1, name
    for t in texts:
        assert t == "" or t.endswith("\n")
        for line in t.splitlines():
            assert LINE.match(line) or line.startswith(("DETAIL:  ", "HINT:  ", "CONTEXT:  ")), line


@pytest.mark.timeout(180)
def test_log_rotation_size(nodes):
    p = nodes.primary(log_rotation_size="8kB")
    assert p.sql("SHOW log_rotation_size") == [("8kB",)]
    assert p.sql("SHOW log_rotation_age") == [("1d",)]
    stop = threading.Event()
    names = [f"size_marker_{i:05d}" for i in range(5000)]
    t, res = run_in_thread(lambda: flood(p, names, stop))
    try:
        evs = rotations(p, 3, timeout=120)
    finally:
        stop.set()
        t.join(60)
    assert "error" not in res, res
    assert {e["reason"] for e in evs} == {"size"}
    sent = res["value"]
    wait_for(lambda: fatal_of(sent[-1]) in p.log_text(), 30, "the last marker")
    check_all_once(p, sent)
    for e in evs:
        # At least the limit; a little more at most: the receiver thread wakes the postmaster's loop
        # when the file reaches it (waiting for the loop's next turn, a second, this flood left
        # about 370 kB per file).
        assert 8192 <= os.path.getsize(os.path.join(p.datadir, "log", e["file"])) < 65536
    check_modes(p)
    # 0 turns it off (a reload); the file then grows past the limit
    p.set_conf(log_rotation_size=0)
    p.sql("SELECT pg_reload_conf()")
    wait_for(lambda: p.sql("SHOW log_rotation_size") == [("0",)], 30, "the reload")
    count = len(p.events("log_rotated"))
    names2 = [f"after_off_{i:04d}" for i in range(120)]
    flood(p, names2)
    wait_for(lambda: fatal_of(names2[-1]) in current_log(p), 30, "the last line")
    assert os.path.getsize(os.path.join(p.datadir, "log", "walswitch.log")) > 8192
    assert len(p.events("log_rotated")) == count


@pytest.mark.timeout(180)
def test_no_line_lost_across_rotations(nodes):
    """Markers logged without pause while rotations are asked for by SQL and by the command."""
    p = nodes.primary()
    names = [f"lost_marker_{i:04d}" for i in range(600)]
    t, res = run_in_thread(lambda: flood(p, names))
    asked = 0
    while t.is_alive() and asked < 8:
        if asked % 2:
            walswitch("logrotate", "-D", p.datadir)
        else:
            p.sql("SELECT pg_rotate_logfile()")
        asked += 1
        rotations(p, asked)
    t.join(120)
    assert not t.is_alive() and "error" not in res, res
    assert asked >= 3, "the markers were all sent before three rotations: send more"
    wait_for(lambda: fatal_of(names[-1]) in p.log_text(), 30, "the last marker")
    check_all_once(p, names)
    assert len(log_files(p.datadir)) == asked + 1
    check_modes(p)


def test_rotated_name_gets_a_counter_when_taken(tmp_path):
    logdir = tmp_path / "log"
    logdir.mkdir()
    when = 86400 * 20000 + 3723
    names = []
    for _ in range(3):
        names.append(os.path.basename(rotated_path(str(logdir), when)))
        (logdir / names[-1]).touch()
    assert names == ["walswitch-2024-10-04_010203.log", "walswitch-2024-10-04_010203.1.log",
                     "walswitch-2024-10-04_010203.2.log"]
    (logdir / "walswitch-2024-10-04_010159.log").touch()
    (logdir / "walswitch.log").touch()
    (logdir / "events.jsonl").touch()
    # oldest first, the current file last
    assert [os.path.basename(f) for f in log_files(str(tmp_path))] == [
        "walswitch-2024-10-04_010159.log", *names, "walswitch.log"]


def test_loop_sleep_ends_at_the_next_age_rotation(tmp_path):
    cfg = Config({s.name: s.default for s in SETTINGS.values()}, {})
    cfg.values["log_rotation_age"] = 1
    rot = LogRotation(str(tmp_path), cfg, EventLog(str(tmp_path), "test"), lambda: None)
    assert 0 < rot.next_rotation - time.time() <= 60
    rot.next_rotation = time.time() + 0.25
    assert 0 < rot.sleep_time(1.0) <= 0.25
    rot.next_rotation = time.time() + 5
    assert rot.sleep_time(1.0) == 1.0
    cfg.values["log_rotation_age"] = 0          # a reload that turns it off
    rot.reload(cfg)
    assert rot.next_rotation is None and rot.sleep_time(1.0) == 1.0


def test_failed_rotation_turns_size_and_age_off_until_a_reload(tmp_path, monkeypatch):
    """As PostgreSQL's rotation_disabled: not tried again at every turn of the loop."""
    from postmaster import syslogger
    calls = []

    def fail(when, err=errno.EACCES):
        calls.append(when)
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(syslogger.elog, "rotate_logfile", fail)
    monkeypatch.setattr(syslogger.elog, "logfile_size", lambda: 20 * 1024)
    cfg = Config({s.name: s.default for s in SETTINGS.values()}, {})
    cfg.values["log_rotation_size"] = 8
    rot = LogRotation(str(tmp_path), cfg, EventLog(str(tmp_path), "test"), lambda: None)
    rot.check()
    assert len(calls) == 1 and rot.disabled
    rot.check()
    assert len(calls) == 1
    rot.request()                       # pg_rotate_logfile() is still tried
    rot.check()
    assert len(calls) == 2
    rot.reload(cfg)                     # a reload turns them on again and asks for one
    assert not rot.disabled and rot.requested
    rot.check()
    assert len(calls) == 3 and rot.disabled
    rot.reload(cfg)
    monkeypatch.setattr(syslogger.elog, "rotate_logfile", lambda when: fail(when, errno.EMFILE))
    rot.check()
    assert len(calls) == 4 and not rot.disabled        # out of descriptors: tried again
    rot.check()
    assert len(calls) == 5


def test_next_rotation_time_is_a_multiple_of_the_age():
    # PostgreSQL's set_next_rotation_time (in UTC): the next multiple of the age, never now.
    day = 86400
    assert next_rotation_time(1440, 10 * day + 5) == 11 * day
    assert next_rotation_time(1440, 10 * day) == 11 * day
    assert next_rotation_time(60, 10 * day + 3599.5) == 10 * day + 3600
    assert next_rotation_time(0, 10 * day) is None
