"""The walreceiver on its own, against a real walswitch primary.

Until the full standby drives it, ``ReceiverEnv`` plays the standby's
postmaster and startup process: a standby data directory (control file, pg_wal),
real shared memory and semaphores, a death pipe, the start request written
into the walrcv region as the startup writes it (state STARTING,
receive_start, receive_start_tli); then ``walreceiver.walreceiver.main`` runs in
a forked child, after ``child_start`` as the postmaster does.  The primary is a
real server (``nodes.primary``); its walsender is the real one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from shmem import names
from shmem.segment import SharedState
from shmem.states import WalRcvState
from tests.cluster import free_port, wait_for
from utils import config as cfgmod
from utils import elog
from utils.events import EventLog, read_events
from utils.proc import ChildContext, child_start
from xlog.control import read_control, write_control
from xlog.lsn import format_lsn, parse_lsn, segment_name, segno_of

SEGSIZE = 1024 * 1024


class ReceiverEnv:
    """A standby data directory with shared memory, and walreceivers forked into it."""

    def __init__(self, base: Path, primary=None, *, sysid: int | None = None, conninfo: str | None = None,
                 name: str = "standby", **conf):
        self.datadir = str((base / name).resolve())
        self.pg_wal = os.path.join(self.datadir, "pg_wal")
        for sub in ("pg_wal/archive_status", "log", "global", "base"):
            os.makedirs(os.path.join(self.datadir, sub), exist_ok=True)
        if primary is not None:
            cf = read_control(primary.datadir)
            if sysid is not None:
                cf = cf.with_changes(system_identifier=sysid)
            write_control(self.datadir, cf)
            conninfo = conninfo or f"host=127.0.0.1 port={primary.port} user=postgres application_name=wrtest"
        conf.setdefault("primary_conninfo", conninfo or "")
        conf.setdefault("max_wal_senders", 2)
        conf.setdefault("port", free_port())
        with open(os.path.join(self.datadir, "walswitch.conf"), "w", encoding="utf-8") as f:
            for k, v in conf.items():
                if isinstance(v, bool):
                    v = "on" if v else "off"
                if isinstance(v, str):
                    v = "'" + v.replace("'", "''") + "'"
                f.write(f"{k} = {v}\n")
        self.config = cfgmod.load(self.datadir)
        self.shared = SharedState.create(self.datadir, 2, os.getpid())
        self.death_r, self.death_w = os.pipe()
        self.events = EventLog(self.datadir, "test")
        self.children: dict[int, int | None] = {}

    # ------------------------------------------------------------ the startup's side
    def request(self, start: int, tli: int = 1) -> None:
        """As the startup's RequestXLogStreaming (first start)."""
        with self.shared.walrcv.locked() as w:
            w.set(state=int(WalRcvState.STARTING), receive_start=start, receive_start_tli=tli,
                  flushed_lsn=start, written_lsn=start, latest_chunk_start=start, received_tli=tli)

    def fork_walreceiver(self) -> int:
        from walreceiver.walreceiver import main
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.death_w)
                root = logging.getLogger(elog.LOGGER_NAME)
                for h in list(root.handlers):
                    root.removeHandler(h)
                fh = logging.FileHandler(os.path.join(self.datadir, "log", "walswitch.log"))
                fh.setFormatter(elog.PgFormatter())
                root.addHandler(fh)
                root.setLevel(logging.DEBUG)
                root.propagate = False
                ctx = ChildContext(self.datadir, self.config, self.shared, "walreceiver", self.death_r,
                                   self.events, {})
                child_start(ctx, "walreceiver")
                code = main(ctx)
            except BaseException:  # noqa: BLE001
                import traceback
                traceback.print_exc()
                code = 4
            finally:
                with contextlib.suppress(Exception):
                    logging.getLogger(elog.LOGGER_NAME).handlers[0].flush()
                os._exit(code if isinstance(code, int) else 1)
        self.children[pid] = None
        return pid

    def wait_exit(self, pid: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                self.children[pid] = code
                return code
            if time.monotonic() > deadline:
                raise AssertionError(f"walreceiver {pid} did not exit within {timeout} s\n{self.log_text()}")
            time.sleep(0.02)

    # ------------------------------------------------------------ observation
    def walrcv(self) -> dict:
        return self.shared.walrcv.read()

    def state(self) -> WalRcvState:
        return WalRcvState(self.shared.walrcv.get("state"))

    def flushed(self) -> int:
        return self.shared.walrcv.get("flushed_lsn")

    def log_text(self) -> str:
        try:
            return Path(self.datadir, "log", "walswitch.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in read_events(self.datadir) if e.get("kind") == kind]

    def segment_files(self) -> list[str]:
        return sorted(f for f in os.listdir(self.pg_wal) if len(f) == 24)

    # ------------------------------------------------------------ teardown
    def close(self) -> list[str]:
        problems = []
        for pid, code in list(self.children.items()):
            if code is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                try:
                    self.wait_exit(pid, 10)
                except AssertionError:
                    problems.append(f"walreceiver {pid} ignored SIGTERM")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
        for fd in (self.death_w, self.death_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.events.close()
        self.shared.destroy()
        left = names.list_objects(self.datadir)
        if left:
            problems.append(f"left in /dev/shm: {left}")
            names.remove_objects(self.datadir)
        return problems


@pytest.fixture
def receiver_env(tmp_path):
    made: list[ReceiverEnv] = []

    def make(primary=None, **kw) -> ReceiverEnv:
        kw.setdefault("name", f"standby{len(made) or ''}")
        env = ReceiverEnv(tmp_path, primary, **kw)
        made.append(env)
        return env

    yield make
    problems = []
    for env in made:
        problems += env.close()
    assert not problems, "; ".join(problems)


# ---------------------------------------------------------------- helpers
def write_rows(node, start: int, n: int, size: int = 200, switch_every: int = 0) -> int:
    with contextlib.closing(node.connect()) as c, c.cursor() as cur:
        for i in range(start, start + n):
            cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"k{i:06d}", f"v{i}-" + "x" * size))
            if switch_every and i % switch_every == switch_every - 1:
                cur.execute("SELECT pg_switch_wal()")
        cur.execute("SELECT pg_current_wal_lsn()")
        return parse_lsn(cur.fetchone()[0])


def walsender_proc(primary) -> psutil.Process:
    return wait_for(lambda: next((p for p in primary.processes()
                                  if " ".join(p.cmdline()).startswith("walswitch: walsender")), None),
                    20, "the primary's walsender")


def first_segment_start(primary) -> int:
    return min(segno_of_file(f) for f in os.listdir(os.path.join(primary.datadir, "pg_wal")) if len(f) == 24) * SEGSIZE


def walsender_slots(primary) -> list[dict]:
    """A snapshot of every walsender slot of the primary's shared memory (what it got from us)."""
    sh = SharedState.attach(primary.datadir)
    try:
        return [slot.snapshot() for slot in sh.walsnd]
    finally:
        sh.close()


def segno_of_file(name: str) -> int:
    return int(name[8:16], 16) * (0x100000000 // SEGSIZE) + int(name[16:24], 16)


def fatal_lines(text: str) -> list[str]:
    return [ln.split("FATAL:  ", 1)[1] for ln in text.splitlines() if "FATAL:  " in ln]


# ---------------------------------------------------------------- tests
@pytest.mark.timeout(120)
def test_streams_identical_segments_publishes_and_wakes(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    write_rows(primary, 0, 300, switch_every=100)
    env = receiver_env(primary, wal_receiver_status_interval=1)
    env.shared.latches["startup"].reset()
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    assert env.walrcv()["pid"] == pid
    # More WAL while streaming, crossing segment boundaries.
    target = write_rows(primary, 300, 600, size=1500, switch_every=250)
    wait_for(lambda: env.flushed() >= target, 30, f"flushed_lsn to reach {format_lsn(target)}")
    assert env.shared.latches["startup"].sem.value == 1, "the startup latch was not set after a flush"
    w = env.walrcv()
    assert w["written_lsn"] >= w["flushed_lsn"] == env.flushed()
    assert w["received_tli"] == 1
    assert w["latest_chunk_start"] < w["flushed_lsn"]
    assert w["last_msg_send_us"] > 0 and w["last_msg_recv_us"] > 0 and w["latest_end_lsn"] >= start
    assert w["sender_host"] == "127.0.0.1" and w["sender_port"] == primary.port
    assert "user=postgres" in w["conninfo"] and "dbname=replication" in w["conninfo"]

    # Byte-identical: every completed segment whole, the current one up to the flush position.
    flushed = env.flushed()
    ppw = os.path.join(primary.datadir, "pg_wal")
    done = set(os.listdir(os.path.join(env.pg_wal, "archive_status")))
    completed = [e["file"] for e in env.events_of("segment_completed")]
    assert len(completed) >= 3
    for segno in range(segno_of(start, SEGSIZE), segno_of(flushed, SEGSIZE) + 1):
        name = segment_name(1, segno, SEGSIZE)
        mine = Path(env.pg_wal, name).read_bytes()
        theirs = Path(ppw, name).read_bytes()
        assert len(mine) == SEGSIZE
        if (segno + 1) * SEGSIZE <= flushed:
            assert mine == theirs, f"{name} differs"
            assert name in completed and name + ".done" in done
        else:
            n = flushed - segno * SEGSIZE
            assert mine[:n] == theirs[:n], f"{name} differs before {format_lsn(flushed)}"
    assert not [f for f in os.listdir(env.pg_wal) if f.startswith("xlogtemp")]

    # The primary's walsender got our positions.
    wait_for(lambda: any(s["flush_lsn"] == flushed for s in walsender_slots(primary)), 20,
             "the primary to see our flush position")

    # Process title.
    title = " ".join(psutil.Process(pid).cmdline()).split()
    assert title[:3] == ["walswitch:", "walreceiver", "streaming"], title
    assert parse_lsn(title[3]) <= flushed

    # SIGTERM: STOPPING, FATAL, STOPPED with pid 0, exit 1.
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    text = env.log_text()
    assert f"LOG:  started streaming WAL from primary at {format_lsn(start)} on timeline 1" in text
    assert fatal_lines(text) == ["terminating walreceiver process due to administrator command"]
    w = env.walrcv()
    assert (w["state"], w["pid"]) == (WalRcvState.STOPPED, 0)
    trans = [(e["from"], e["to"]) for e in env.events_of("walreceiver_state")]
    assert trans == [("starting", "streaming"), ("streaming", "stopping"), ("stopping", "stopped")]
    assert env.events_of("walreceiver_connect")[0]["start_lsn"] == format_lsn(start)
    assert env.events_of("walreceiver_disconnect")[0]["reason"] == "shutdown"


@pytest.mark.timeout(60)
def test_connection_refused(receiver_env, tmp_path):
    port = free_port()
    env = receiver_env(None, conninfo=f"host=127.0.0.1 port={port} user=postgres")
    # A control file is needed only after connecting; give one anyway.
    from walswitch.initdb import initdb
    initdb(str(tmp_path / "scratch"), 1)
    write_control(env.datadir, read_control(str(tmp_path / "scratch")))
    env.request(SEGSIZE, 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == [
        f'could not connect to the primary server: connection to server at "127.0.0.1", port {port} failed: '
        "Connection refused"]
    assert "\tIs the server running on that host and accepting TCP/IP connections?" in env.log_text()
    w = env.walrcv()
    assert (w["state"], w["pid"]) == (WalRcvState.STOPPED, 0)
    assert env.segment_files() == []
    assert env.events_of("walreceiver_connect_failed")


@pytest.mark.timeout(90)
def test_system_identifier_mismatch_writes_nothing(nodes, receiver_env):
    primary = nodes.primary()
    theirs = read_control(primary.datadir).system_identifier
    env = receiver_env(primary, sysid=theirs + 1)
    env.request(first_segment_start(primary), 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    text = env.log_text()
    assert fatal_lines(text) == ["database system identifier differs between the primary and standby"]
    assert (f"DETAIL:  The primary's identifier is {theirs}, the standby's identifier is {theirs + 1}."
            in text.splitlines())
    assert env.segment_files() == []
    assert os.listdir(os.path.join(env.pg_wal, "archive_status")) == []
    assert env.walrcv()["pid"] == 0


@pytest.mark.timeout(90)
def test_walsender_killed_connection_lost(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    write_rows(primary, 0, 100)
    env = receiver_env(primary)
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    target = write_rows(primary, 100, 50)
    wait_for(lambda: env.flushed() >= target, 20, "flush")
    walsender_proc(primary).send_signal(signal.SIGKILL)
    assert env.wait_exit(pid) == 1
    text = env.log_text()
    assert fatal_lines(text) == ["could not receive data from WAL stream: server closed the connection unexpectedly"]
    assert "\tThis probably means the server terminated abnormally" in text
    ev = env.events_of("walreceiver_disconnect")
    assert len(ev) == 1 and ev[0]["reason"] == "connection lost"
    assert parse_lsn(ev[0]["flushed_lsn"]) >= target
    w = env.walrcv()
    assert (w["state"], w["pid"]) == (WalRcvState.STOPPED, 0)
    assert w["flushed_lsn"] >= target


@pytest.mark.timeout(90)
def test_timeout_when_the_primary_goes_silent(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    env = receiver_env(primary, wal_receiver_timeout="1s", wal_receiver_status_interval=0)
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    ws = walsender_proc(primary)
    ws.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert env.wait_exit(pid, 20) == 1
        took = time.monotonic() - t0
    finally:
        ws.send_signal(signal.SIGCONT)
    assert fatal_lines(env.log_text()) == ["terminating walreceiver due to timeout"]
    assert took < 5, took
    assert env.events_of("walreceiver_disconnect")[0]["reason"] == "timeout"


@pytest.mark.timeout(90)
def test_removed_segment_error(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    write_rows(primary, 0, 400, size=1500, switch_every=100)
    primary.sql("CHECKPOINT")
    wait_for(lambda: first_segment_start(primary) > start, 20, "old segments to be removed")
    env = receiver_env(primary)
    env.request(start, 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    name = segment_name(1, segno_of(start, SEGSIZE), SEGSIZE)
    assert fatal_lines(env.log_text()) == [
        f"could not receive data from WAL stream: ERROR:  requested WAL segment {name} has already been removed"]
    assert (env.walrcv()["state"], env.walrcv()["pid"]) == (WalRcvState.STOPPED, 0)


@pytest.mark.timeout(90)
def test_primary_shutdown_ends_replication(nodes, receiver_env):
    primary = nodes.primary()
    start = first_segment_start(primary)
    target = write_rows(primary, 0, 200, switch_every=60)
    env = receiver_env(primary, archive_mode="always")
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.flushed() >= target, 20, "flush")
    primary.stop("fast")
    assert env.wait_exit(pid) == 1
    text = env.log_text()
    assert "LOG:  replication terminated by primary server" in text
    assert "DETAIL:  End of WAL reached on timeline 1 at " in text
    assert fatal_lines(text)[0].startswith("could not send end-of-streaming message to primary: ")
    # Everything the primary wrote before its shutdown checkpoint was received.
    end = read_control(primary.datadir).checkpoint_lsn
    assert env.flushed() > end
    # archive_mode = always: what we completed waits for our own archiver (.ready, not .done).
    completed = [e["file"] for e in env.events_of("segment_completed")]
    assert len(completed) >= 3
    status = set(os.listdir(os.path.join(env.pg_wal, "archive_status")))
    assert all(f + ".ready" in status and f + ".done" not in status for f in completed)


@pytest.mark.timeout(60)
def test_primary_timeline_behind_ours(nodes, receiver_env):
    primary = nodes.primary()
    env = receiver_env(primary)
    env.request(first_segment_start(primary), 2)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == ["highest timeline 1 of the primary is behind recovery timeline 2"]
    assert env.segment_files() == []


@pytest.mark.timeout(60)
def test_not_started_when_stop_was_requested(receiver_env):
    env = receiver_env(None, conninfo="host=127.0.0.1 port=1")
    with env.shared.walrcv.locked() as w:
        w.set(state=int(WalRcvState.STOPPING), receive_start=SEGSIZE, receive_start_tli=1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert (env.walrcv()["state"], env.walrcv()["pid"]) == (WalRcvState.STOPPED, 0)
    assert not fatal_lines(env.log_text())


@pytest.mark.timeout(60)
def test_postmaster_death_exits_at_once(nodes, receiver_env):
    primary = nodes.primary()
    env = receiver_env(primary)
    env.request(first_segment_start(primary), 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    os.close(env.death_w)
    env.death_w = -1
    assert env.wait_exit(pid, 10) == 1
    assert (env.walrcv()["state"], env.walrcv()["pid"]) == (WalRcvState.STOPPED, 0)


@pytest.mark.timeout(180)
def test_end_of_timeline_then_restart_on_the_same_connection(nodes, receiver_env):
    """Stream timeline 1 from a promoted standby: the copy ends at the switchpoint, the history file
    comes over, WAITING; a restart request on timeline 2 streams on without reconnecting."""
    from tests.cluster import walswitch
    from tests.invariants import wait_streaming
    from xlog.history import read_history
    primary = nodes.primary()
    write_rows(primary, 0, 200, switch_every=100)
    upstream = nodes.standby(primary, "upstream", wal_keep_size=64)
    last = write_rows(primary, 200, 100, switch_every=60)
    wait_streaming(upstream, 60)
    wait_for(lambda: parse_lsn(upstream.status()["replay_lsn"] or "0/0") >= last, 60, "upstream to replay")
    primary.stop("fast")
    walswitch("promote", "-D", upstream.datadir)
    wait_for(lambda: upstream.status()["mode"] == "primary", 60, "promotion")
    end2 = write_rows(upstream, 300, 300, switch_every=120)
    up_wal = os.path.join(upstream.datadir, "pg_wal")
    hist = Path(up_wal, "00000002.history").read_text()
    switchpoint = read_history(hist)[-1].switchpoint
    tl1 = sorted(f for f in os.listdir(up_wal) if len(f) == 24 and f.startswith("00000001"))
    start = segno_of_file(tl1[0]) * SEGSIZE

    env = receiver_env(upstream)
    env.request(start, 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.WAITING, 30, "end of timeline 1")
    text = env.log_text()
    assert "LOG:  fetching timeline history file for timeline 2 from primary server" in text
    assert "LOG:  replication terminated by primary server" in text
    assert f"DETAIL:  End of WAL reached on timeline 1 at {format_lsn(switchpoint)}." in text
    assert env.flushed() == switchpoint
    assert Path(env.pg_wal, "00000002.history").read_text() == hist
    assert os.path.exists(os.path.join(env.pg_wal, "archive_status", "00000002.history.done"))
    # Timeline 1 as the upstream has it (its last, partial segment renamed .partial), up to the switchpoint.
    for segno in range(segno_of(start, SEGSIZE), segno_of(switchpoint - 1, SEGSIZE) + 1):
        name = segment_name(1, segno, SEGSIZE)
        n = min(SEGSIZE, switchpoint - segno * SEGSIZE)
        src = Path(up_wal, name) if os.path.exists(os.path.join(up_wal, name)) else Path(up_wal, name + ".partial")
        assert Path(env.pg_wal, name).read_bytes()[:n] == src.read_bytes()[:n], name
        assert os.path.exists(os.path.join(env.pg_wal, "archive_status", name + ".done"))
    assert env.walrcv()["receive_start"] == 0

    # The startup's restart request: RESTARTING with the next timeline's start, then our latch.
    restart = segno_of(switchpoint, SEGSIZE) * SEGSIZE
    with env.shared.walrcv.locked() as w:
        w.set(receive_start=restart, receive_start_tli=2, state=int(WalRcvState.RESTARTING))
    env.shared.latches["walreceiver"].set()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 30, "streaming on timeline 2")
    wait_for(lambda: env.flushed() >= end2, 30, "timeline 2 flushed")
    assert f"LOG:  restarted WAL streaming at {format_lsn(restart)} on timeline 2" in env.log_text()
    for segno in range(segno_of(restart, SEGSIZE), segno_of(end2, SEGSIZE)):
        name = segment_name(2, segno, SEGSIZE)
        assert Path(env.pg_wal, name).read_bytes() == Path(up_wal, name).read_bytes(), name
    assert env.walrcv()["received_tli"] == 2
    # One connection for both timelines.
    mine = [e for e in upstream.events("walsender_start") if e.get("application_name") == "wrtest"]
    assert len(mine) == 1
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1
    trans = [(e["from"], e["to"]) for e in env.events_of("walreceiver_state")]
    assert trans == [("starting", "streaming"), ("streaming", "waiting"), ("restarting", "streaming"),
                     ("streaming", "stopping"), ("stopping", "stopped")]
    assert [e["restart"] for e in env.events_of("walreceiver_connect")] == [False, True]


@pytest.mark.timeout(90)
def test_answers_keepalives_that_ask_for_a_reply(nodes, receiver_env):
    """No periodic status and no pings from us: only our answers to the walsender's
    reply-requesting keepalives keep its wal_sender_timeout (1 s) from firing."""
    primary = nodes.primary(wal_sender_timeout="1s")
    # Two hosts, the first refusing: libpq's rule, the next one is tried.
    env = receiver_env(primary, wal_receiver_status_interval=0, wal_receiver_timeout=0,
                       conninfo=f"host=127.0.0.1,127.0.0.1 port={free_port()},{primary.port} user=postgres")
    env.request(first_segment_start(primary), 1)
    pid = env.fork_walreceiver()
    wait_for(lambda: env.state() == WalRcvState.STREAMING, 20, "walreceiver streaming")
    assert env.walrcv()["sender_port"] == primary.port
    sender = walsender_proc(primary)
    seen: set[int] = set()

    def replies() -> bool:
        seen.update(s["reply_time_us"] for s in walsender_slots(primary) if s["pid"] == sender.pid)
        return len(seen - {0}) >= 4
    wait_for(replies, 20, "four answered keepalives")
    assert sender.is_running() and env.state() == WalRcvState.STREAMING
    assert "replication timeout" not in primary.log_text()
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid) == 1


def test_conninfo_parsing_and_masking():
    from walreceiver.libpqwalreceiver import ConnInfoError, masked_conninfo, parse_conninfo
    assert parse_conninfo("host=127.0.0.1 port = 5433 user='a b' password='it\\'s' application_name=x") == {
        "host": "127.0.0.1", "port": "5433", "user": "a b", "password": "it's", "application_name": "x"}
    assert parse_conninfo("postgresql://u:p%40w@h1:1,h2:2/db?application_name=z") == {
        "user": "u", "password": "p@w", "host": "h1,h2", "port": "1,2", "dbname": "db", "application_name": "z"}
    with pytest.raises(ConnInfoError, match='invalid connection option "bogus"'):
        parse_conninfo("bogus=1")
    with pytest.raises(ConnInfoError, match='missing "=" after "host"'):
        parse_conninfo("host")
    with pytest.raises(ConnInfoError, match="unterminated quoted string"):
        parse_conninfo("password='abc")
    assert masked_conninfo({"user": "u", "password": "secret", "host": "h", "port": "1", "dbname": "replication"}) \
        == "user=u password=******** dbname=replication host=h port=1"


@pytest.mark.timeout(60)
def test_bad_conninfo_is_a_connect_failure(receiver_env, tmp_path):
    env = receiver_env(None, conninfo="host=127.0.0.1 nonsense=1")
    from walswitch.initdb import initdb
    initdb(str(tmp_path / "scratch"), 1)
    write_control(env.datadir, read_control(str(tmp_path / "scratch")))
    env.request(SEGSIZE, 1)
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == [
        'could not connect to the primary server: invalid connection option "nonsense"']
