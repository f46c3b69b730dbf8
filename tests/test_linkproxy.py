"""The link proxy (walswitch/linkproxy.py): forwarding, cut, stall/resume, close without leaks.

The target is a small echo server in this process; every wait is bounded.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.cluster import ROOT, free_port, wait_for
from walswitch.linkproxy import CUT, NORMAL, STALLED, LinkProxy, ProxyError


class EchoServer:
    """Echoes every byte back; on EOF from the client, closes its side. Records what it received."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.accepted = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, name="echo-accept", daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            c.settimeout(0.1)
            with self.lock:
                self.accepted += 1
                self.conns.append(c)
            t = threading.Thread(target=self._echo, args=(c,), name="echo-conn", daemon=True)
            self.threads.append(t)
            t.start()

    def _echo(self, c: socket.socket):
        while not self.stop.is_set():
            try:
                data = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            with self.lock:
                self.received += len(data)
            try:
                c.sendall(data)
            except OSError:
                break
        try:
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.lock:
            self.conns.remove(c)
        c.close()

    def close(self):
        self.stop.set()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)
        with self.lock:
            for c in self.conns:
                c.close()
        self.sock.close()


@pytest.fixture
def echo():
    e = EchoServer()
    yield e
    e.close()


@pytest.fixture
def proxy(echo):
    p = LinkProxy(echo.port)
    yield p
    p.close()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.settimeout(timeout)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def is_closed(s: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closed (EOF or reset) within ``timeout``."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("linkproxy")]


def no_new_fds(before: set[str]) -> bool:
    """The echo server closes its side once it sees EOF, a moment after the proxy's."""
    return not (open_fds() - before)


@pytest.mark.timeout(30)
def test_forwards_both_ways(proxy, echo):
    assert proxy.port != echo.port and proxy.mode == NORMAL
    payload = os.urandom(3 * 1024 * 1024)
    with connect(proxy.port) as s:
        # Send and read concurrently: the payload is larger than the socket buffers.
        t = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
        t.start()
        got = recv_exactly(s, len(payload))
        t.join(10)
        assert got == payload
    # The proxy thread counts a chunk after its send returns: the client may have it a moment earlier.
    wait_for(lambda: proxy.counters()["bytes_down"] == len(payload), 5, "the proxy to count what it sent")
    c = proxy.counters()
    assert c["bytes_up"] == len(payload) and c["bytes_down"] == len(payload)
    assert c["accepted"] == 1


@pytest.mark.timeout(30)
def test_many_clients_and_half_close(proxy):
    socks = [connect(proxy.port) for _ in range(8)]
    try:
        for i, s in enumerate(socks):
            s.sendall(f"hello {i}".encode())
        for i, s in enumerate(socks):
            assert recv_exactly(s, len(f"hello {i}")) == f"hello {i}".encode()
        wait_for(lambda: proxy.connections() == 8, 5, "8 connections")
        # Half-close: our EOF reaches the echo server, which then closes its side.
        s = socks[0]
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert recv_exactly(s, 10) == b"last words"
        assert is_closed(s)
        wait_for(lambda: proxy.connections() == 7, 5, "the half-closed connection to go")
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: proxy.connections() == 0, 5, "all connections to go")


@pytest.mark.timeout(30)
def test_cut_closes_and_refuses_then_resume(proxy, echo):
    a, b = connect(proxy.port), connect(proxy.port)
    try:
        for s in (a, b):
            s.sendall(b"ping")
            assert recv_exactly(s, 4) == b"ping"
        proxy.cut()
        assert proxy.mode == CUT
        assert proxy.connections() == 0
        assert proxy.counters()["closed_by_cut"] == 2
        assert is_closed(a) and is_closed(b)
        # New connections are accepted, then closed at once; the target never sees them.
        before = echo.accepted
        for _ in range(3):
            with connect(proxy.port) as c:
                assert is_closed(c)
        assert proxy.counters()["refused"] == 3
        assert echo.accepted == before
    finally:
        a.close()
        b.close()
    proxy.resume()
    assert proxy.mode == NORMAL
    with connect(proxy.port) as c:
        c.sendall(b"again")
        assert recv_exactly(c, 5) == b"again"


@pytest.mark.timeout(30)
def test_stall_holds_bytes_then_resume_delivers(proxy, echo):
    with connect(proxy.port) as s:
        s.sendall(b"before")
        assert recv_exactly(s, 6) == b"before"
        proxy.stall()
        assert proxy.mode == STALLED
        received = echo.received
        s.sendall(b"during the stall")
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert echo.received == received, "bytes crossed a stalled link"
        assert proxy.connections() == 1, "a stall must keep the connection open"
        # A connection opened during the stall is held open too, silent.
        with connect(proxy.port) as late:
            late.sendall(b"late")
            late.settimeout(0.5)
            with pytest.raises(socket.timeout):
                late.recv(10)
            proxy.resume()
            late.settimeout(5)
            assert recv_exactly(late, 4) == b"late"
        s.settimeout(5)
        assert recv_exactly(s, 16) == b"during the stall"
        s.sendall(b"after")
        assert recv_exactly(s, 5) == b"after"


@pytest.mark.timeout(30)
def test_stall_then_cut(proxy):
    with connect(proxy.port) as s:
        proxy.stall()
        s.sendall(b"x" * 1000)
        proxy.cut()
        assert is_closed(s)
    proxy.resume()
    with connect(proxy.port) as s:
        s.sendall(b"ok")
        assert recv_exactly(s, 2) == b"ok"


@pytest.mark.timeout(30)
def test_target_down_closes_client():
    port = free_port()  # nothing listens there
    with LinkProxy(port) as p:
        with connect(p.port) as s:
            assert is_closed(s)
        wait_for(lambda: p.counters()["upstream_failed"] == 1, 5, "the failed upstream connect to count")
        assert p.connections() == 0


@pytest.mark.timeout(30)
def test_close_leaves_no_threads_or_sockets(echo):
    threads_before = set(threading.enumerate())
    assert proxy_threads() == []
    fds_before = open_fds()
    p = LinkProxy(echo.port)
    port = p.port
    socks = [connect(port) for _ in range(5)]
    for s in socks:
        s.sendall(b"hi")
        assert recv_exactly(s, 2) == b"hi"
    p.stall()
    p.close()
    p.close()  # idempotent
    assert not p._thread.is_alive()
    for s in socks:
        assert is_closed(s)
        s.close()
    assert proxy_threads() == []
    wait_for(lambda: set(threading.enumerate()) <= threads_before, 5, "the echo threads to finish")
    wait_for(lambda: no_new_fds(fds_before), 5, "no new file descriptors")
    with pytest.raises(OSError):
        connect(port, timeout=2).close()
    with pytest.raises(ProxyError):
        p.cut()


@pytest.mark.timeout(30)
def test_repeated_proxies_do_not_leak(echo):
    fds_before = open_fds()
    for _ in range(20):
        with LinkProxy(echo.port) as p:
            with connect(p.port) as s:
                s.sendall(b"z")
                assert recv_exactly(s, 1) == b"z"
            p.cut()
            assert len(proxy_threads()) == 1
        assert proxy_threads() == []
    wait_for(lambda: no_new_fds(fds_before), 5, "no new file descriptors")


@pytest.mark.timeout(30)
def test_command_line(echo):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "walswitch.linkproxy", str(port), str(echo.port)],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert "linkproxy: 127.0.0.1:%d" % port in proc.stdout.readline()
        with connect(port) as s:
            s.sendall(b"cli")
            assert recv_exactly(s, 3) == b"cli"
            proc.stdin.write("cut\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "linkproxy: cut"
            assert is_closed(s)
        proc.stdin.write("resume\nquit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    assert not Path(f"/proc/{proc.pid}").exists() or proc.returncode is not None
