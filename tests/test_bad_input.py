"""Issue 2, item 7: bad input gives a one-line error naming the cause, and loses nothing.

Every refusal is exactly one line on the CLI's stderr (``walswitch <cmd>:
error: ...``), no traceback in stderr or in the server's log, leaves no
process, shared memory or lock file behind, and the data are all there at
the next good start:

* bad settings in walswitch.conf (bad value, bad enum, unknown name, syntax
  errors, out of range) and on the command line (``-c foo=bar``, ``-c foo``);
* the port in use; the data directory missing; the server already running;
* the control file missing, corrupt or truncated;
* a torn or corrupt record at the end of WAL: recovery stops at the last
  valid record with PostgreSQL's message, the server starts with every
  acknowledged commit, and new writes work and survive another crash;
* ``walswitch init`` on a non-empty directory, ``--wal-segsize 3``.

An unknown SQL statement (an error, and the connection stays usable) is
tested by tests/test_sql_e2e.py::test_errors_keep_the_connection.
"""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from postmaster import pidfile
from tests.cluster import Node, shm_objects, wait_for, walswitch
from xlog import constants as C
from xlog.control import control_path, read_control
from xlog.lsn import format_lsn, segment_name
from xlog.reader import WalReader
from xlog.record import commit_record, kv_put_record
from xlog.writer import WalWriter

ROWS = {f"r{i}": f"v{i}" for i in range(20)}


# ---------------------------------------------------------------- helpers
def one_line_error(p: subprocess.CompletedProcess, cmd: str, *needles: str) -> str:
    """The command failed with exactly one line on stderr, naming the cause."""
    assert p.returncode != 0, f"walswitch {cmd} succeeded: {p.stdout}"
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{p.stderr}"
    assert lines[0].startswith(f"walswitch {cmd}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def no_traceback_in_logs(node: Node) -> None:
    logdir = os.path.join(node.datadir, "log")
    for name in os.listdir(logdir) if os.path.isdir(logdir) else []:
        with open(os.path.join(logdir, name), errors="replace") as f:
            text = f.read()
        assert "Traceback" not in text, f"traceback in {name}:\n{text[-3000:]}"


def nothing_left(node: Node) -> None:
    assert not node.processes()
    assert shm_objects(node.datadir) == []
    assert not os.path.exists(pidfile.path(node.datadir))


def load_rows(node: Node) -> None:
    c = node.connect()
    with c.cursor() as cur:
        for k, v in ROWS.items():
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (k, v))
    c.close()


def rows(node: Node) -> dict[str, str]:
    return dict(node.sql("SELECT key, value FROM kv"))


def start_fails(node: Node, *needles: str, args: tuple[str, ...] = ()) -> str:
    line = one_line_error(node.start(*args, check=False, timeout=20), "start", *needles)
    nothing_left(node)
    return line


@pytest.fixture
def stopped(nodes) -> Node:
    """A primary holding ROWS, cleanly stopped."""
    n = nodes.primary()
    load_rows(n)
    n.stop("fast")
    return n


# ---------------------------------------------------------------- settings
BAD_SETTINGS = [
    ("port = 'abc'", 'invalid value for parameter "port": "abc"'),
    ("archive_mode = maybe", 'invalid value for parameter "archive_mode": "maybe" (available values: off, on, always)'),
    ("no_such_setting = 1", 'unrecognized configuration parameter "no_such_setting"'),
    ("port = = 5", "syntax error in file"),
    ("restore_command = 'cp %p", "unterminated quoted string"),
    ("just_a_word", "syntax error in file"),
    ("max_wal_senders = 100", '100 is outside the valid range for parameter "max_wal_senders" (0 .. 64)'),
    (b"cluster_name = 'caf\xe9'", 'invalid byte sequence for encoding "UTF8": 0xe9'),   # Latin-1, not UTF-8
    ("checkpoint_timeout = '5 parsecs'", 'invalid value for parameter "checkpoint_timeout"'),
]

BAD_OPTIONS = [
    (("-c", "foo=bar"), 'unrecognized configuration parameter "foo"'),
    (("-c", "foo"), "-c foo requires a value"),
    (("-c", "port=abc"), 'invalid value for parameter "port": "abc"'),
    (("-c", "archive_mode=maybe"), 'invalid value for parameter "archive_mode": "maybe"'),
    (("-p", "0"), '0 is outside the valid range for parameter "port"'),
]


@pytest.mark.timeout(60)
def test_bad_settings(stopped):
    n = stopped
    conf = os.path.join(n.datadir, "walswitch.conf")
    with open(conf) as f:
        good = f.read()
    line_no = good.count("\n") + 1
    for bad, needle in BAD_SETTINGS:
        with open(conf, "wb") as f:
            f.write(good.encode() + (bad if isinstance(bad, bytes) else bad.encode()) + b"\n")
        line = start_fails(n, needle)
        assert f'"{conf}" line {line_no}' in line, line
    # The foreground start reads the same file the same way.
    p = walswitch("start", "-D", n.datadir, check=False, timeout=20)
    one_line_error(p, "start", "invalid value for parameter", f"line {line_no}")
    with open(conf, "w") as f:
        f.write(good)
    for args, needle in BAD_OPTIONS:
        start_fails(n, needle, args=args)
    n.start()
    assert rows(n) == ROWS
    no_traceback_in_logs(n)


# ---------------------------------------------------------------- the environment
@pytest.mark.timeout(60)
def test_port_in_use(stopped):
    n = stopped
    with socket.socket() as s:
        # SO_REUSEADDR: the stopped server's connections may linger in TIME_WAIT on this port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", n.port))
        s.listen()
        cause = 'could not bind IPv4 address "127.0.0.1": Address already in use'
        start_fails(n, f"could not start server: {cause}")
        # In the foreground the server's own FATAL line is the one line on stderr.
        p = walswitch("start", "-D", n.datadir, check=False, timeout=20)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and f"FATAL:  {cause}" in lines[0], p.stderr
        nothing_left(n)
    n.start()
    assert rows(n) == ROWS
    no_traceback_in_logs(n)


@pytest.mark.timeout(60)
def test_data_directory_missing(tmp_path):
    missing = str(tmp_path / "nosuchdir")
    for cmd in ("start", "stop", "status", "promote", "dump"):
        p = walswitch(cmd, "-D", missing, check=False)
        one_line_error(p, cmd, f'data directory "{missing}" does not exist')
    env = {k: v for k, v in os.environ.items() if k not in ("PGDATA", "WALSWITCH_DATA")}
    one_line_error(walswitch("start", check=False, env=env), "start",
                   "no data directory specified (use -D or set PGDATA)")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(walswitch("start", "-D", str(empty), check=False), "start",
                   f'could not open configuration file "{empty}/walswitch.conf": No such file or directory')
    assert os.listdir(empty) == []
    assert not os.path.exists(missing)


@pytest.mark.timeout(60)
def test_already_running(nodes):
    n = nodes.primary()
    load_rows(n)
    pid = n.pid
    objects = {o: os.stat(os.path.join("/dev/shm", o)).st_ino for o in shm_objects(n.datadir)}
    needle = f'lock file "postmaster.pid" already exists: is another postmaster (PID {pid}) running in data directory'
    one_line_error(n.start(check=False, timeout=20), "start", needle)
    one_line_error(walswitch("start", "-D", n.datadir, check=False, timeout=20), "start", needle)
    one_line_error(n.start("-p", "1", check=False, timeout=20), "start", needle)
    # The running server did not notice: same postmaster, same objects, data readable and writable.
    assert pidfile.read(n.datadir).pid == pid and n.is_running()
    assert {o: os.stat(os.path.join("/dev/shm", o)).st_ino for o in shm_objects(n.datadir)} == objects
    n.sql("INSERT INTO kv VALUES ('still', 'running')")
    assert rows(n) == {**ROWS, "still": "running"}
    n.stop("fast")
    nothing_left(n)
    no_traceback_in_logs(n)


# ---------------------------------------------------------------- the control file
@pytest.mark.timeout(60)
def test_control_file_missing_or_corrupt(stopped):
    n = stopped
    path = control_path(n.datadir)
    with open(path, "rb") as f:
        good = f.read()

    def put(data: bytes | None) -> None:
        if data is None:
            os.unlink(path)
        else:
            with open(path, "wb") as f:
                f.write(data)

    flipped = bytearray(good)
    flipped[40] ^= 0xFF                       # inside the checkpoint LSN (the rest is padding)
    cases = [
        (None, f'could not open control file "{path}": No such file or directory'),
        (bytes(flipped), f'incorrect checksum in control file "{path}"'),
        (good[:10], f'could not read file "{path}": read 10 of {len(good)}'),
        (b"", f'could not read file "{path}": read 0 of {len(good)}'),
        (good + b"\0", f'incorrect size of control file "{path}": {len(good) + 1} bytes, expected {len(good)}'),
    ]
    for data, needle in cases:
        put(data)
        start_fails(n, needle)
    put(good)
    n.start()
    assert rows(n) == ROWS
    no_traceback_in_logs(n)


# ---------------------------------------------------------------- the end of WAL
def wal_records(node: Node):
    cf = read_control(node.datadir)
    r = WalReader.from_dir(os.path.join(node.datadir, "pg_wal"), cf.wal_segsize, cf.timeline, cf.redo_lsn)
    return cf, list(r)


def wal_file_offset(node: Node, cf, lsn: int) -> tuple[str, int]:
    seg = segment_name(cf.timeline, lsn // cf.wal_segsize, cf.wal_segsize)
    return os.path.join(node.datadir, "pg_wal", seg), lsn % cf.wal_segsize


def write_at(node: Node, cf, lsn: int, data: bytes) -> None:
    path, off = wal_file_offset(node, cf, lsn)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def append_unacknowledged(node: Node, big: bool):
    """Append the WAL of a transaction the backend was writing when it crashed (never acknowledged).

    Returns (put record LSN, the commit record, the rows the transaction writes).
    The commit record never crosses a page; with ``big`` the put record spans pages.
    """
    cf, recs = wal_records(node)
    last = recs[-1]
    xid = max(r.xid for r in recs) + 1
    written = {"torn": "x" * (20000 if big else 10)}
    w = WalWriter(os.path.join(node.datadir, "pg_wal"), cf.timeline, cf.wal_segsize, cf.system_identifier,
                  last.next_lsn, last.lsn)
    put_lsn, _ = w.insert(*kv_put_record(xid, "torn", written["torn"]))
    while C.XLOG_BLCKSZ - w.insert_lsn % C.XLOG_BLCKSZ < 64:
        written["torn-filler"] = "y"
        w.insert(*kv_put_record(xid, "torn-filler", "y"))
    w.insert(*commit_record(xid))
    w.flush()
    w.close()
    _cf, recs = wal_records(node)
    commit = recs[-1]
    assert commit.rmid == C.RM_XACT_ID and commit.xid == xid
    assert commit.lsn // C.XLOG_BLCKSZ == (commit.end_lsn - 1) // C.XLOG_BLCKSZ
    return put_lsn, commit, written


def last_commit_on_one_page(node: Node) -> None:
    """Insert rows until the last acknowledged commit record lies well inside one page."""
    for i in range(100):
        _cf, recs = wal_records(node)
        if recs[-1].rmid == C.RM_XACT_ID and recs[-1].lsn % C.XLOG_BLCKSZ < C.XLOG_BLCKSZ - 64:
            return
        node.sql("INSERT INTO kv VALUES (%s, 'pad')", (f"pad{i}",))
    raise AssertionError("no commit record inside a page")


TORN = ["intact", "zero-record", "zero-tail", "flip", "torn-page", "acknowledged", "acknowledged-many"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", TORN)
def test_torn_or_corrupt_end_of_wal(nodes, damage):
    n = nodes.primary()
    load_rows(n)
    if damage.startswith("acknowledged"):
        last_commit_on_one_page(n)
    want = rows(n)
    n.stop("immediate")
    cf, recs = wal_records(n)
    if damage == "acknowledged":
        # The brief's literal form: damage the last commit a client saw succeed.  Its WAL is
        # gone, but the store had applied it; recovery says so and keeps it.
        lsn = recs[-1].lsn
        write_at(n, cf, lsn + 24, bytes(recs[-1].end_lsn - lsn - 24))
        expect = f"incorrect resource manager data checksum in record at {format_lsn(lsn)}"
    elif damage == "acknowledged-many":
        # Lose the WAL of the last ten acknowledged commits: more than the end-of-recovery
        # checkpoint rewrites, so new commits land at LSNs the store had already applied.
        lsn = [r for r in recs if r.rmid == C.RM_XACT_ID][-10].lsn
        assert lsn % C.XLOG_BLCKSZ <= C.XLOG_BLCKSZ - 24
        write_at(n, cf, lsn, bytes(recs[-1].end_lsn - lsn))
        expect = f"invalid record length at {format_lsn(lsn)}: wanted 24, got 0"
    else:
        put_lsn, commit, written = append_unacknowledged(n, big=damage == "torn-page")
        lsn, length = commit.lsn, commit.tot_len
        if damage == "intact":                # the method's control: the appended commit replays
            want.update(written)
            expect = "redo done at"
        elif damage == "zero-record":
            write_at(n, cf, lsn, bytes(length))
            expect = f"invalid record length at {format_lsn(lsn)}: wanted 24, got 0"
        elif damage == "zero-tail":
            write_at(n, cf, lsn + 24, bytes(length - 24))
            expect = f"incorrect resource manager data checksum in record at {format_lsn(lsn)}"
        elif damage == "flip":
            path, off = wal_file_offset(n, cf, lsn + length - 3)
            with open(path, "r+b") as f:
                f.seek(off)
                b = f.read(1)[0]
                f.seek(off)
                f.write(bytes([b ^ 0x5A]))
            expect = f"incorrect resource manager data checksum in record at {format_lsn(lsn)}"
        else:                                 # torn-page: the pages after the first never reached disk
            page = (put_lsn // C.XLOG_BLCKSZ + 1) * C.XLOG_BLCKSZ
            _path, off = wal_file_offset(n, cf, page)
            write_at(n, cf, page, bytes(cf.wal_segsize - off))
            expect = (f"invalid magic number 0000 in log segment "
                      f"{segment_name(cf.timeline, page // cf.wal_segsize, cf.wal_segsize)}, offset {off}")
    log_size = len(n.log_text())
    n.start()
    # The startup process's lines reach the file through the postmaster's log queue.
    wait_for(lambda: "redo done at" in n.log_text()[log_size:], 10, "the end of redo in the log")
    log = n.log_text()[log_size:]
    assert "database system was not properly shut down; automatic recovery in progress" in log
    assert expect in log, log
    assert rows(n) == want
    # New writes after the end of recovery work and survive another crash.
    for i in range(30):
        n.sql("INSERT INTO kv VALUES (%s, 'after')", (f"new{i}",))
    want.update({f"new{i}": "after" for i in range(30)})
    assert rows(n) == want
    n.kill9_all()
    n.start()
    assert rows(n) == want
    assert ("beyond the end of valid WAL" in log) == damage.startswith("acknowledged"), log
    no_traceback_in_logs(n)


# ---------------------------------------------------------------- init
@pytest.mark.timeout(60)
def test_init_refuses_bad_input(tmp_path, stopped):
    d = tmp_path / "notempty"
    d.mkdir()
    (d / "precious").write_text("keep me")
    one_line_error(walswitch("init", "-D", str(d), check=False), "init",
                   f'directory "{d}" exists but is not empty')
    assert os.listdir(d) == ["precious"] and (d / "precious").read_text() == "keep me"
    # Not over an existing data directory either.
    before = sorted(os.listdir(stopped.datadir))
    one_line_error(walswitch("init", "-D", stopped.datadir, check=False), "init", "exists but is not empty")
    assert sorted(os.listdir(stopped.datadir)) == before
    for size in ("3", "0", "2048"):
        fresh = tmp_path / f"seg{size}"
        one_line_error(walswitch("init", "-D", str(fresh), "--wal-segsize", size, check=False), "init",
                       f"argument of --wal-segsize must be a power of 2 between 1 and 1024: {size}")
        assert not fresh.exists()
    stopped.start()
    assert rows(stopped) == ROWS
    no_traceback_in_logs(stopped)


@pytest.mark.timeout(60)
def test_postgresql_auto_conf_read_after_walswitch_conf(tmp_path):
    """pg_basebackup -R writes primary_conninfo into postgresql.auto.conf: it wins over walswitch.conf,
    PostgreSQL-only settings there are left alone, a bad value of ours names the file and line."""
    from utils import config as cfgmod
    (tmp_path / "walswitch.conf").write_text("primary_conninfo = 'host=old'\nport = 5433\n")
    (tmp_path / "postgresql.auto.conf").write_text(
        "# Do not edit this file manually!\nprimary_conninfo = 'user=repl host=new port=5432'\n"
        "shared_buffers = '128MB'\n")
    cfg = cfgmod.load(str(tmp_path))
    assert cfg["primary_conninfo"] == "user=repl host=new port=5432" and cfg["port"] == 5433
    assert cfg.sources["primary_conninfo"].endswith("postgresql.auto.conf:2")
    (tmp_path / "postgresql.auto.conf").write_text("port = 'many'\n")
    with pytest.raises(cfgmod.ConfigError) as ei:
        cfgmod.load(str(tmp_path))
    assert f'in file "{tmp_path}/postgresql.auto.conf" line 1' in str(ei.value)
