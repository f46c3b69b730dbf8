"""A backend process without a postmaster, for tests of backend/backend.py.

``BackendHarness`` makes what the postmaster and the startup process would
have made: a data directory (control file, WAL with a shutdown checkpoint,
the key/value store), shared memory with the end of WAL published, the
listening socket, the hand-off socket pair and the death pipe; then forks
``backend.backend.main`` with a ChildContext.  ``stop()`` kills whatever is
left and removes the shared memory, so no process or /dev/shm entry
survives a test.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

import psycopg2

from shmem.segment import SharedState
from utils import config as cfgmod
from utils.elog import PgFormatter
from utils.events import EventLog
from utils.proc import ChildContext
from xlog import constants as C
from xlog.control import ControlFile, DBState, read_control, write_control
from xlog.lsn import segment_start
from xlog.record import CheckPoint
from xlog.writer import WalWriter

PGBIN = Path("/usr/lib/postgresql/15/bin")
TITLE_PREFIX = "wsharness: "


def make_datadir(datadir: str, segsize: int = 1 << 20, conf: dict | None = None) -> ControlFile:
    for sub in ("global", "pg_wal/archive_status", "base", "log"):
        os.makedirs(os.path.join(datadir, sub), exist_ok=True)
    lines = [f"{k} = '{v}'" if isinstance(v, str) else f"{k} = {v}" for k, v in (conf or {}).items()]
    Path(datadir, "walswitch.conf").write_text("\n".join(lines) + "\n")
    sysid = 7_000_000_000_000_000_000 + os.getpid()
    start = segment_start(1, segsize)
    w = WalWriter(os.path.join(datadir, "pg_wal"), 1, segsize, sysid, start, 0)
    redo = w.next_record_lsn
    cp = CheckPoint(redo=redo, this_tli=1, prev_tli=1, next_xid=3, time=int(time.time()))
    ckpt_lsn, _ = w.insert(C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN, 0, cp.pack())
    w.flush()
    w.close()
    from libpq.hba import default_hba
    from storage.kvstore import KVStore
    from storage.roles import RoleInfo, apply_role_change
    store = KVStore(datadir)
    apply_role_change(store.conn, "postgres", RoleInfo("postgres", True, True, True, oid=10).to_json())
    store.close()
    Path(datadir, "pg_hba.conf").write_text(default_hba("trust", "trust"))
    cf = ControlFile(system_identifier=sysid, state=DBState.SHUTDOWNED, checkpoint_lsn=ckpt_lsn, redo_lsn=redo,
                     timeline=1, prev_timeline=1, wal_segsize=segsize, next_xid=3, time=time.time())
    write_control(datadir, cf)
    return cf


def end_of_wal(datadir: str, cf: ControlFile) -> tuple[int, int]:
    """(end of valid WAL, start of the last record), read as the startup process would."""
    from xlog.reader import WalReader
    r = WalReader.from_dir(os.path.join(datadir, "pg_wal"), cf.wal_segsize, cf.timeline, cf.checkpoint_lsn,
                           expected_sysid=cf.system_identifier)
    end, last = cf.checkpoint_lsn, 0
    while (rec := r.read_record()) is not None:
        end, last = rec.next_lsn, rec.lsn
    return end, last


class BackendHarness:
    def __init__(self, datadir: str, *, standby: bool = False, conf: dict | None = None,
                 max_wal_senders: int = 2, create: bool = True):
        self.datadir = datadir
        self.standby = standby
        if create:
            self.cf = make_datadir(datadir, conf=conf)
        else:
            self.cf = read_control(datadir)
        self.config = cfgmod.load(datadir)
        self.shared = SharedState.create(datadir, max_wal_senders, 0)
        self.pid: int | None = None
        self.listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listen.bind(("127.0.0.1", 0))
        self.listen.listen(128)
        self.listen.setblocking(False)
        self.port = self.listen.getsockname()[1]
        self.handoff_parent, self.handoff_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.death_r, self.death_w = os.pipe()
        self.exit_status: int | None = None

    def publish_end_of_wal(self) -> None:
        cf = read_control(self.datadir)
        end, last = end_of_wal(self.datadir, cf)
        with self.shared.xlog.locked() as x:
            x.set(system_identifier=cf.system_identifier, wal_segsize=cf.wal_segsize, timeline=cf.timeline,
                  insert_lsn=end, write_lsn=end, flush_lsn=end, last_record_lsn=last, redo_lsn=cf.redo_lsn,
                  checkpoint_lsn=cf.checkpoint_lsn, in_recovery=1 if self.standby else 0,
                  accepting_writes=0 if self.standby else 1)

    def start(self) -> "BackendHarness":
        self.publish_end_of_wal()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(self.death_w)
                self.handoff_parent.close()
                lg = logging.getLogger("walswitch")
                for h in list(lg.handlers):
                    lg.removeHandler(h)
                fh = logging.FileHandler(os.path.join(self.datadir, "log", "walswitch.log"))
                fh.setFormatter(PgFormatter())
                lg.addHandler(fh)
                lg.setLevel(logging.DEBUG)
                lg.propagate = False
                ctx = ChildContext(self.datadir, self.config, self.shared, "backend", self.death_r,
                                   EventLog(self.datadir, "postmaster"),
                                   {"listen_sock": self.listen, "handoff_sock": self.handoff_child,
                                    "shutdown_checkpoint": not self.standby})
                # Our own title prefix: a leak check of another test session on this machine
                # kills stray "walswitch: " processes, and this one has no postmaster.
                import setproctitle
                import utils.proc
                utils.proc.set_title = lambda t: setproctitle.setproctitle(f"{TITLE_PREFIX}{t}")
                from backend.backend import main
                code = main(ctx)
            except BaseException:  # noqa: BLE001
                import traceback
                traceback.print_exc()
            finally:
                logging.shutdown()
                os._exit(code if isinstance(code, int) else 1)
        self.pid = pid
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                c = self.connect()
                c.close()
                return
            except psycopg2.OperationalError:
                if self.poll() is not None:
                    raise AssertionError(f"backend exited with {self.exit_status}:\n{self.log_text()}")
                time.sleep(0.02)
        raise AssertionError("backend did not accept connections")

    # ------------------------------------------------------------ client side
    def dsn(self, **kw) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "user": "postgres", "dbname": "postgres",
                 "connect_timeout": 10, **kw}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, autocommit: bool = False, **kw):
        c = psycopg2.connect(self.dsn(**kw))
        c.autocommit = autocommit
        return c

    def sql(self, query: str):
        with contextlib.closing(self.connect(autocommit=True)) as c, c.cursor() as cur:
            cur.execute(query)
            return cur.fetchall() if cur.description else []

    def log_text(self) -> str:
        try:
            return Path(self.datadir, "log", "walswitch.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ process
    def poll(self) -> int | None:
        if self.exit_status is not None or self.pid is None:
            return self.exit_status
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.exit_status = os.waitstatus_to_exitcode(status)
        return self.exit_status

    def wait_exit(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.poll()
            if st is not None:
                return st
            time.sleep(0.01)
        raise AssertionError("backend did not exit")

    def signal(self, sig: int) -> None:
        assert self.pid is not None
        os.kill(self.pid, sig)

    def stop(self) -> None:
        """Kill the backend if alive; remove shared memory; close everything."""
        if self.pid is not None and self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.wait_exit(10)
        for fd in (self.death_r, self.death_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for s in (self.listen, self.handoff_parent, self.handoff_child):
            with contextlib.suppress(OSError):
                s.close()
        self.shared.destroy()
