"""The walreceiver's libpq connection in the cases a server cannot show: a server that never answers
(connect_timeout, and SIGTERM while connecting), conninfo errors that must not echo a secret, and the
shared replication-message codec (libpq/protocol.py) that both the walsender and the walreceiver use."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from libpq import protocol as P
from shmem.states import WalRcvState
from tests.cluster import wait_for
from tests.test_walreceiver import SEGSIZE, fatal_lines, receiver_env  # noqa: F401 (fixture)
from xlog.control import read_control, write_control


@pytest.fixture
def silent_server():
    """A TCP port on 127.0.0.1 that accepts connections and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def _env(receiver_env, tmp_path, conninfo: str, **conf):
    env = receiver_env(None, conninfo=conninfo, **conf)
    from walswitch.initdb import initdb
    initdb(str(tmp_path / "scratch"), 1)
    write_control(env.datadir, read_control(str(tmp_path / "scratch")))
    env.request(SEGSIZE, 1)
    return env


@pytest.mark.timeout(60)
def test_connect_timeout_against_a_silent_server(receiver_env, tmp_path, silent_server):
    env = _env(receiver_env, tmp_path, f"host=127.0.0.1 port={silent_server} user=postgres connect_timeout=2")
    t0 = time.monotonic()
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    took = time.monotonic() - t0
    assert fatal_lines(env.log_text()) == [
        f'could not connect to the primary server: connection to server at "127.0.0.1", port {silent_server} '
        "failed: timeout expired"]
    assert 1.5 < took < 10, took


@pytest.mark.timeout(60)
def test_sigterm_while_connecting(receiver_env, tmp_path, silent_server):
    env = _env(receiver_env, tmp_path, f"host=127.0.0.1 port={silent_server} user=postgres",
               wal_receiver_timeout=0)
    pid = env.fork_walreceiver()
    wait_for(lambda: "walreceiver connecting" in " ".join(_cmdline(pid)), 20, "the walreceiver to connect")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert env.wait_exit(pid, 10) == 1
    assert time.monotonic() - t0 < 3
    assert fatal_lines(env.log_text()) == ["terminating walreceiver process due to administrator command"]
    assert (env.walrcv()["state"], env.walrcv()["pid"]) == (WalRcvState.STOPPED, 0)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.mark.timeout(60)
def test_bad_uri_never_echoes_the_password(receiver_env, tmp_path):
    env = _env(receiver_env, tmp_path, "postgresql://repl:s3cr%zzet@127.0.0.1:1/x")
    pid = env.fork_walreceiver()
    assert env.wait_exit(pid) == 1
    assert fatal_lines(env.log_text()) == [
        'could not connect to the primary server: invalid percent-encoded token: "********"']
    assert "s3cr" not in env.log_text()


def test_replication_messages_round_trip():
    w = P.xlog_data_header(0x1_0000_0028, 0x1_0000_2000, -5) + b"WAL"
    assert w[0] == P.XLOGDATA_KIND and w[P.XLOGDATA_PAYLOAD:] == b"WAL"
    assert P.decode_xlog_data(memoryview(w)) == (0x1_0000_0028, 0x1_0000_2000, -5)
    k = P.keepalive(2 ** 64 - 1, 123, True)
    assert len(k) == 18 and P.decode_keepalive(k) == P.Keepalive(2 ** 64 - 1, 123, True)
    r = P.standby_status(1, 2, 3, 4, False)
    assert len(r) == 34 and P.decode_standby_status(r) == P.StandbyStatus(1, 2, 3, 4, False)
    h = P.hot_standby_feedback(7, 8, 9, 10, 11)
    assert len(h) == 25 and P.decode_hot_standby_feedback(h) == P.HotStandbyFeedback(7, 8, 9, 10, 11)
    for short, decode in ((w[:24], P.decode_xlog_data), (k[:17], P.decode_keepalive),
                          (r[:33], P.decode_standby_status), (h[:24], P.decode_hot_standby_feedback)):
        with pytest.raises(P.ProtocolError):
            decode(short)
