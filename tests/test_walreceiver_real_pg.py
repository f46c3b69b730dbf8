"""Our walreceiver against a real PostgreSQL 15 primary: its libpq client and its file writing.

The primary is PostgreSQL 15 itself (initdb --wal-segsize=1, run as the postgres
user), reached over TCP with SCRAM-SHA-256 or MD5 password authentication.  The
standby side is ``ReceiverEnv`` from test_walreceiver.py with a control file
carrying PostgreSQL's system identifier.  What arrives in our pg_wal must be
byte-identical to PostgreSQL's own segment files, and PostgreSQL's
pg_stat_replication must show the positions we reported.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from shmem.states import WalRcvState
from tests.cluster import wait_for
from tests.test_walreceiver import SEGSIZE, ReceiverEnv, fatal_lines, receiver_env  # noqa: F401 (fixture)
from xlog.control import ControlFile, DBState, write_control
from xlog.lsn import format_lsn, parse_lsn, segment_name, segno_of

PG_BIN = "/usr/lib/postgresql/15/bin"


def _cannot_run_pg() -> str | None:
    if not os.path.exists(os.path.join(PG_BIN, "postgres")):
        return "PostgreSQL 15 is not installed"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user"
    if os.geteuid() != 0:
        return "must run as root to run PostgreSQL as postgres"
    return None


pytestmark = pytest.mark.skipif(_cannot_run_pg() is not None, reason=str(_cannot_run_pg()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PG15:
    """A throwaway PostgreSQL 15 primary in a postgres-owned directory under /tmp."""

    HBA = """\
local all all trust
host replication postgres 127.0.0.1/32 scram-sha-256
host replication md5user 127.0.0.1/32 md5
host all all 127.0.0.1/32 trust
"""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="walswitch-wr-pg15-", dir="/tmp")
        os.chmod(self.base, 0o755)
        shutil.chown(self.base, "postgres", "postgres")
        self.data = os.path.join(self.base, "data")
        self.port = _free_port()
        self.started = False

    def run(self, prog: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, prog), *args],
                           capture_output=True, text=True, timeout=timeout, cwd=self.base)
        assert p.returncode == 0, f"{prog} failed: {p.stderr}{p.stdout}"
        return p

    def psql(self, sql: str) -> str:
        return self.run("psql", "-h", self.base, "-p", str(self.port), "-U", "postgres", "-X", "-q", "-A", "-t",
                        "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-c", sql).stdout.strip()

    def init_and_start(self) -> None:
        self.run("initdb", "-D", self.data, "--wal-segsize=1", "-A", "trust", "-U", "postgres", "-N",
                 "--no-instructions")
        Path(self.data, "pg_hba.conf").write_text(self.HBA)
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c wal_level=replica "
                "-c max_wal_senders=4 -c wal_keep_size=256MB -c fsync=off -c wal_sender_timeout=60s")
        self.started = True
        self.run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.base, "log"), "-w", "-t", "30",
                 "start")
        self.psql("ALTER ROLE postgres PASSWORD 'scram-secret'")
        self.psql("SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-secret'")

    def controldata(self) -> dict[str, str]:
        out = self.run("pg_controldata", self.data).stdout
        return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}

    def pg_wal(self) -> str:
        return os.path.join(self.data, "pg_wal")

    def close(self) -> None:
        if self.started:
            subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, "pg_ctl"), "-D", self.data,
                            "-m", "immediate", "-w", "-t", "20", "stop"], capture_output=True, timeout=40)
        # Anything of this cluster still running (only ours: matched by our directory).
        for p in psutil.process_iter(["pid", "cmdline", "username"]):
            try:
                if p.info["username"] == "postgres" and any(self.base in a for a in (p.info["cmdline"] or [])):
                    p.send_signal(signal.SIGKILL)
            except (psutil.Error, TypeError):
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def pg15():
    c = PG15()
    try:
        c.init_and_start()
        yield c
    finally:
        c.close()


def standby_for(receiver_env, pg: PG15, conninfo: str, **conf) -> ReceiverEnv:
    cd = pg.controldata()
    env = receiver_env(None, conninfo=conninfo, **conf)
    ckpt = parse_lsn(cd["Latest checkpoint location"])
    write_control(env.datadir, ControlFile(
        system_identifier=int(cd["Database system identifier"]), state=DBState.IN_ARCHIVE_RECOVERY,
        checkpoint_lsn=ckpt, redo_lsn=parse_lsn(cd["Latest checkpoint's REDO location"]), timeline=1,
        prev_timeline=1, wal_segsize=int(cd["Bytes per WAL segment"])))
    return env


@pytest.mark.timeout(120)
def test_streams_postgresql_wal_byte_for_byte_with_scram(pg15, receiver_env):
    first = min(f for f in os.listdir(pg15.pg_wal()) if len(f) == 24)
    start = int(first[16:24], 16) * SEGSIZE
    env = standby_for(receiver_env, pg15, f"host=127.0.0.1 port={pg15.port} user=postgres "
                                          f"password=scram-secret application_name=ours",
                      wal_receiver_status_interval=1)
    pg15.psql("CREATE TABLE t (id int PRIMARY KEY, v text); "
              "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    for i in range(3):
        pg15.psql(f"INSERT INTO t SELECT g, repeat('y', 300) FROM generate_series({10000 * (i + 1)}, "
                  f"{10000 * (i + 1) + 3000}) g; SELECT pg_switch_wal()")
    pg15.psql("INSERT INTO t VALUES (-1, 'tail')")
    target = parse_lsn(pg15.psql("SELECT pg_current_wal_flush_lsn()"))
    wait_for(lambda: env.flushed() >= target, 30, f"flush to {format_lsn(target)}")
    flushed = env.flushed()
    for segno in range(segno_of(start, SEGSIZE), segno_of(flushed, SEGSIZE) + 1):
        name = segment_name(1, segno, SEGSIZE)
        mine = Path(env.pg_wal, name).read_bytes()
        theirs = Path(pg15.pg_wal(), name).read_bytes()
        n = min(SEGSIZE, flushed - segno * SEGSIZE)
        assert mine[:n] == theirs[:n], f"{name} differs from PostgreSQL's"
    assert len(env.events_of("segment_completed")) >= 3
    # PostgreSQL saw our reports.
    def replication_row() -> list[str] | None:
        row = pg15.psql("SELECT application_name, state, flush_lsn FROM pg_stat_replication").split("|")
        return row if len(row) == 3 and parse_lsn(row[2]) == flushed else None
    row = wait_for(replication_row, 20, "pg_stat_replication to show our flush position")
    assert row[:2] == ["ours", "streaming"]
    w = env.walrcv()
    assert "password=********" in w["conninfo"] and "scram-secret" not in w["conninfo"]
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    assert f"started streaming WAL from primary at {format_lsn(start)} on timeline 1" in env.log_text()


@pytest.mark.timeout(90)
def test_md5_password(pg15, receiver_env):
    start = int(min(f for f in os.listdir(pg15.pg_wal()) if len(f) == 24)[16:24], 16) * SEGSIZE
    good = standby_for(receiver_env, pg15, f"host=127.0.0.1 port={pg15.port} user=md5user password=md5-secret")
    good.request(start, 1)
    pid = good.fork_walreceiver()
    wait_for(lambda: good.state() == WalRcvState.STREAMING, 20, "md5 walreceiver streaming")
    os.kill(pid, signal.SIGTERM)
    assert good.wait_exit(pid) == 1


@pytest.mark.timeout(90)
def test_wrong_password_is_libpq_message(pg15, receiver_env):
    env = standby_for(receiver_env, pg15, f"host=127.0.0.1 port={pg15.port} user=md5user password=nope")
    env.request(SEGSIZE, 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == [
        f'could not connect to the primary server: connection to server at "127.0.0.1", port {pg15.port} '
        'failed: FATAL:  password authentication failed for user "md5user"']
    assert env.segment_files() == []


@pytest.mark.timeout(90)
def test_no_password_supplied(pg15, receiver_env):
    env = standby_for(receiver_env, pg15, f"host=127.0.0.1 port={pg15.port} user=postgres")
    env.request(SEGSIZE, 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == [
        f'could not connect to the primary server: connection to server at "127.0.0.1", port {pg15.port} '
        "failed: fe_sendauth: no password supplied"]
