"""A stand-in postmaster for testing the walsender and the archiver on their own.

``PrimaryHarness`` makes a data directory with real shared memory
(``SharedState.create``), writes real PostgreSQL 15 WAL with ``WalWriter``,
publishes the flush position in ``shared.xlog`` as the backend does (and sets
the walsender latches after each flush), listens on 127.0.0.1, and forks
``walsender.walsender.main`` for each connection it accepts (after reading the
startup packet, as the backend does before the hand-over), or
``archiver.archiver.main``.  Teardown closes the death pipe, reaps (and if
needed kills) every child, destroys shared memory, and checks /dev/shm.

The few tests at the bottom check the harness itself.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest

from libpq import protocol as P
from shmem import names
from shmem.segment import SharedState
from tests.cluster import wait_for
from utils import config as cfgmod
from utils import elog
from utils.events import EventLog, read_events
from utils.proc import ChildContext
from xlog import constants as C
from xlog.lsn import segment_name
from xlog.writer import WalWriter

SEGSIZE = 1024 * 1024
SYSID = 7300000000000000001


class PrimaryHarness:
    def __init__(self, base: Path, segsize: int = SEGSIZE, max_wal_senders: int = 3, tli: int = 1,
                 **conf: Any):
        self.datadir = str((base / "data").resolve())
        self.pg_wal = os.path.join(self.datadir, "pg_wal")
        self.status_dir = os.path.join(self.pg_wal, "archive_status")
        for sub in ("pg_wal/archive_status", "log", "global", "base"):
            os.makedirs(os.path.join(self.datadir, sub), exist_ok=True)
        self.segsize = segsize
        self.tli = tli
        conf.setdefault("max_wal_senders", max_wal_senders)
        self.write_conf(**conf)
        self.config = cfgmod.load(self.datadir)
        self.shared = SharedState.create(self.datadir, max_wal_senders, os.getpid())
        with self.shared.xlog.locked():
            self.shared.xlog.set(system_identifier=SYSID, wal_segsize=segsize, timeline=tli, accepting_writes=1)
        self.death_r, self.death_w = os.pipe()
        self.events = EventLog(self.datadir, "harness")
        self.children: dict[int, str] = {}
        self.writer: WalWriter | None = None
        self.listen: socket.socket | None = None
        self.port = 0
        self._accept_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.accepted: list[int] = []
        self.exit_status: dict[int, int] = {}
        self._setup_logging()

    # ------------------------------------------------------------ setup
    def write_conf(self, **conf: Any) -> None:
        with open(os.path.join(self.datadir, "walswitch.conf"), "w", encoding="utf-8") as f:
            for k, v in conf.items():
                if isinstance(v, bool):
                    v = "on" if v else "off"
                if isinstance(v, str):
                    v = "'" + v.replace("'", "''") + "'"
                f.write(f"{k} = {v}\n")

    def _setup_logging(self) -> None:
        root = logging.getLogger(elog.LOGGER_NAME)
        self._old_handlers = list(root.handlers)
        self._old_level = root.level
        for h in self._old_handlers:
            root.removeHandler(h)
        self._log_handler = logging.FileHandler(os.path.join(self.datadir, "log", "walswitch.log"))
        self._log_handler.setFormatter(elog.PgFormatter())
        root.addHandler(self._log_handler)
        root.setLevel(logging.DEBUG)
        root.propagate = False

    def log_text(self) -> str:
        try:
            return Path(self.datadir, "log", "walswitch.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in read_events(self.datadir) if e.get("kind") == kind]

    # ------------------------------------------------------------ WAL
    def start_wal(self, start_lsn: int | None = None, prev_lsn: int = 0) -> WalWriter:
        if start_lsn is None:
            start_lsn = self.segsize   # segment 1, as initdb
        self.writer = WalWriter(self.pg_wal, self.tli, self.segsize, SYSID, start_lsn, prev_lsn,
                                on_segment_complete=self._segment_complete)
        self.write_records(1)
        return self.writer

    def _segment_complete(self, segno: int, path: str) -> None:
        pass

    def write_records(self, n: int, size: int = 200) -> int:
        """Insert n records of about `size` bytes, flush, publish; returns the flush LSN."""
        assert self.writer is not None
        for i in range(n):
            payload = (b"%08d" % i) * (size // 8)
            self.writer.insert(C.RM_XLOG_ID, C.XLOG_NOOP, 0, payload)
        return self.flush()

    def write_bytes(self, nbytes: int) -> int:
        return self.write_records(max(1, nbytes // 8000), size=8000)

    def switch(self) -> int:
        assert self.writer is not None
        self.writer.switch()
        return self.flush()

    def flush(self) -> int:
        assert self.writer is not None
        lsn = self.writer.flush()
        self.publish(lsn)
        return lsn

    def publish(self, flush_lsn: int) -> None:
        with self.shared.xlog.locked():
            self.shared.xlog.set(flush_lsn=flush_lsn, write_lsn=flush_lsn, insert_lsn=flush_lsn)
        for latch in self.shared.walsnd_latches:
            latch.set()

    def segment_path(self, segno: int, tli: int | None = None) -> str:
        return os.path.join(self.pg_wal, segment_name(tli or self.tli, segno, self.segsize))

    def mark_ready(self, name: str) -> None:
        Path(self.status_dir, name + ".ready").touch()

    # ------------------------------------------------------------ children
    def _ctx(self, role: str, extra: dict) -> ChildContext:
        return ChildContext(self.datadir, self.config, self.shared, role, self.death_r, self.events, extra)

    def fork(self, role: str, target: Callable[[ChildContext], int], extra: dict | None = None,
             close: tuple = ()) -> int:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if self.death_w >= 0:
                    os.close(self.death_w)
                if self.listen is not None and self.listen not in close:
                    with contextlib.suppress(OSError):
                        self.listen.close()
                code = target(self._ctx(role, dict(extra or {})))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
                code = 3
            finally:
                with contextlib.suppress(Exception):
                    self._log_handler.flush()
                os._exit(code if isinstance(code, int) else 1)
        self.children[pid] = role
        return pid

    def start_archiver(self) -> int:
        from archiver.archiver import main
        return self.fork("archiver", main)

    def listen_for_walsenders(self) -> int:
        """Listen on 127.0.0.1; a thread accepts, reads the startup packet and forks a walsender."""
        self.listen = socket.socket()
        self.listen.bind(("127.0.0.1", 0))
        self.listen.listen(16)
        self.listen.settimeout(0.2)
        self.port = self.listen.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()
        return self.port

    def _accept_loop(self) -> None:
        # Children are forked from this thread: it must outlive them (PR_SET_PDEATHSIG
        # fires when the forking *thread* ends), so it runs until teardown.
        from walsender.walsender import main
        assert self.listen is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.listen.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(10)
            try:
                pkt = P.read_startup(conn)
            except (P.ProtocolError, OSError):
                conn.close()
                continue
            if pkt.cancel is not None:
                conn.close()
                continue
            conn.settimeout(None)
            pid = self.fork("walsender", main, {"conn_sock": conn, "startup_params": pkt.params})
            self.accepted.append(pid)
            conn.close()
        while self._children_alive():
            time.sleep(0.05)

    def _children_alive(self) -> bool:
        return any(self.alive(pid) for pid in self.children)

    def alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie still answers kill(0); check its state.
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except (FileNotFoundError, IndexError):
            return False

    def wait_exit(self, pid: int, timeout: float = 20.0) -> int:
        """Reap one child; returns its exit code (negative: the signal)."""
        deadline = time.monotonic() + timeout
        while True:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                self.children.pop(pid, None)
                if os.WIFSIGNALED(status):
                    return -os.WTERMSIG(status)
                return os.WEXITSTATUS(status)
            if time.monotonic() > deadline:
                raise AssertionError(f"child {pid} did not exit within {timeout} s")
            time.sleep(0.02)

    def walsender_pid(self, timeout: float = 10.0) -> int:
        wait_for(lambda: self.accepted, timeout, "a walsender to be forked")
        return self.accepted[-1]

    def postmaster_death(self) -> None:
        """Close the write end of the death pipe, as a dying postmaster would."""
        if self.death_w >= 0:
            os.close(self.death_w)
            self.death_w = -1

    # ------------------------------------------------------------ teardown
    def close(self) -> list[str]:
        problems: list[str] = []
        self.postmaster_death()
        deadline = time.monotonic() + 10
        for pid in list(self.children):
            while time.monotonic() < deadline:
                wpid, status = os.waitpid(pid, os.WNOHANG)
                if wpid == pid:
                    self.exit_status[pid] = status
                    self.children.pop(pid, None)
                    break
                time.sleep(0.02)
            else:
                problems.append(f"child {pid} ({self.children[pid]}) did not exit on postmaster death")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                self.children.pop(pid, None)
        self._stop.set()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        if self.listen is not None:
            self.listen.close()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        with contextlib.suppress(OSError):
            os.close(self.death_r)
        self.events.close()
        self.shared.destroy()
        left = names.list_objects(self.datadir)
        if left:
            problems.append(f"left in /dev/shm: {left}")
            names.remove_objects(self.datadir)
        root = logging.getLogger(elog.LOGGER_NAME)
        root.removeHandler(self._log_handler)
        self._log_handler.close()
        for h in self._old_handlers:
            root.addHandler(h)
        root.setLevel(self._old_level)
        return problems


@pytest.fixture
def harness_factory(tmp_path):
    made: list[PrimaryHarness] = []

    def make(**kw: Any) -> PrimaryHarness:
        h = PrimaryHarness(tmp_path, **kw)
        made.append(h)
        return h

    yield make
    problems: list[str] = []
    for h in made:
        problems += h.close()
    assert not problems, "; ".join(problems)


# ---------------------------------------------------------------- a raw protocol client
class RawClient:
    """A minimal replication client on a blocking socket, to see every message as sent."""

    def __init__(self, port: int, application_name: str = "rawclient", timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        params = {"user": "postgres", "database": "replication", "replication": "true",
                  "application_name": application_name}
        body = struct.pack("!I", P.PROTOCOL_3) + b"".join(P.cstr(k) + P.cstr(v) for k, v in params.items()) + b"\0"
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        self.greeting = self.until(b"Z")

    def recv(self) -> tuple[bytes, bytes]:
        return P.read_message(self.sock)

    def until(self, mtype: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            m = self.recv()
            out.append(m)
            if m[0] == mtype:
                return out

    def query(self, text: str) -> list[tuple[bytes, bytes]]:
        self.sock.sendall(P.msg(b"Q", P.cstr(text)))
        return self.until(b"Z")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def standby_status(self, write: int, flush: int, apply: int, reply: bool = False) -> None:
        t = time.time_ns() // 1000 - 946_684_800 * 1_000_000
        self.send(P.copy_data(b"r" + struct.pack("!QQQqB", write, flush, apply, t, int(reply))))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(P.msg(b"X"))
        self.sock.close()


def error_fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode()
    return out


def rows(msgs: list[tuple[bytes, bytes]]) -> list[list[bytes | None]]:
    out = []
    for t, body in msgs:
        if t != b"D":
            continue
        (n,) = struct.unpack_from("!H", body)
        pos = 2
        row: list[bytes | None] = []
        for _ in range(n):
            (ln,) = struct.unpack_from("!i", body, pos)
            pos += 4
            if ln < 0:
                row.append(None)
            else:
                row.append(body[pos:pos + ln])
                pos += ln
        out.append(row)
    return out


def columns(msgs: list[tuple[bytes, bytes]]) -> list[tuple[str, int]]:
    for t, body in msgs:
        if t == b"T":
            (n,) = struct.unpack_from("!H", body)
            pos = 2
            cols = []
            for _ in range(n):
                end = body.index(b"\0", pos)
                name = body[pos:end].decode()
                pos = end + 1
                _tbl, _att, typ, _len, _mod, _fmt = struct.unpack_from("!IhIhih", body, pos)
                pos += 18
                cols.append((name, typ))
            return cols
    return []


# ---------------------------------------------------------------- harness self-checks
@pytest.mark.timeout(30)
def test_harness_publishes_wal_and_cleans_up(harness_factory):
    h = harness_factory()
    h.start_wal()
    lsn = h.write_bytes(300_000)
    assert h.shared.xlog.get("flush_lsn") == lsn > SEGSIZE
    assert os.path.getsize(h.segment_path(1)) == SEGSIZE
    assert names.list_objects(h.datadir)
