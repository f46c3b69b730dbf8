"""A TCP proxy on 127.0.0.1 whose link can be cut or stalled: the "network" of the fault tests and the demo.

States (``mode``): ``normal`` (bytes flow both ways), ``stalled`` (connections
stay open, nothing is read or written in either direction; new connections are
accepted and held the same way), ``cut`` (every current connection is closed
and each new one is accepted and closed at once).  ``cut()``, ``stall()`` and
``resume()`` switch between them; ``close()`` ends the proxy.

Who runs what: one thread, the proxy loop, owns the listening socket, every
connection and the selector; nothing else touches them.  The control methods
put a command on a queue, wake the loop through a socket pair and wait
(bounded) until the loop has carried it out, so when ``cut()`` returns the
connections are closed.  ``close()`` stops the loop and joins its thread; no
thread or socket outlives it.

Each client connection gets its own connection to the target, opened without
blocking; a refused upstream connection closes the client's (the client sees
"server closed the connection unexpectedly").  Half-closes are passed on.

Usable from tests and the demo in the same process::

    with LinkProxy(target_port=5432) as proxy:
        ... connect to proxy.port ...
        proxy.cut(); proxy.resume()

or on its own: ``python -m walswitch.linkproxy LISTEN_PORT TARGET_PORT``
(then type ``cut``, ``stall``, ``resume``, ``status`` or ``quit`` on stdin).
"""
from __future__ import annotations

import errno
import queue
import selectors
import socket
import sys
import threading
from dataclasses import dataclass, field

NORMAL, STALLED, CUT = "normal", "stalled", "cut"
BUF_LIMIT = 256 * 1024          # bytes buffered per direction before reading pauses
CHUNK = 64 * 1024
CONTROL_TIMEOUT = 10.0          # seconds a control call waits for the loop
SELECT_TIMEOUT = 0.5            # the loop never blocks longer than this


class ProxyError(RuntimeError):
    pass


@dataclass
class _Half:
    """One direction of a connection: bytes read from ``src`` waiting to be written to ``dst``."""
    src: socket.socket
    dst: socket.socket
    counter: str                # name of the byte counter in LinkProxy.stats
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False           # src reached EOF
    shut: bool = False          # EOF passed on to dst (shutdown SHUT_WR)


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client = client
        self.upstream = upstream
        self.connected = False  # the upstream connect has completed
        self.up = _Half(client, upstream, "bytes_up")        # client -> target
        self.down = _Half(upstream, client, "bytes_down")    # target -> client

    def socks(self) -> tuple[socket.socket, socket.socket]:
        return self.client, self.upstream


class LinkProxy:
    """Forward 127.0.0.1:``port`` to ``target_host``:``target_port``; see the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0,
                 listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((listen_host, listen_port))
            self._listener.listen(64)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.mode = NORMAL
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._commands: queue.Queue = queue.Queue()
        self._pairs: dict[socket.socket, _Pair] = {}
        self._lock = threading.Lock()   # guards the counters and the closed flag
        self._closed = False
        self.stats = {"accepted": 0, "refused": 0, "upstream_failed": 0, "closed_by_cut": 0,
                      "bytes_up": 0, "bytes_down": 0}
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"linkproxy:{self.port}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ control (any thread)
    def cut(self) -> None:
        """Close every current connection; from now on accept and close at once."""
        self._control(CUT)

    def stall(self) -> None:
        """Keep connections open but forward nothing in either direction."""
        self._control(STALLED)

    def resume(self) -> None:
        """Forward normally again (new connections are accepted and forwarded)."""
        self._control(NORMAL)

    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return self._control("count")

    def counters(self) -> dict[str, int]:
        """A copy of the counters: accepted, refused (while cut), upstream_failed, closed_by_cut, bytes_up/down."""
        with self._lock:
            return dict(self.stats)

    def close(self, timeout: float = CONTROL_TIMEOUT) -> None:
        """Close every socket and stop the loop thread (idempotent, bounded)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._commands.put(("close", None, None))
        self._wake()
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - the loop never blocks this long
            raise ProxyError(f"link proxy thread did not stop within {timeout} s")
        self._wake_w.close()

    def __enter__(self) -> "LinkProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LinkProxy(127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}, {self.mode})"

    def _control(self, what: str):
        with self._lock:
            if self._closed:
                raise ProxyError("link proxy is closed")
        done = threading.Event()
        box: list = []
        self._commands.put((what, done, box))
        self._wake()
        if not done.wait(CONTROL_TIMEOUT):
            raise ProxyError(f"link proxy did not carry out {what!r} within {CONTROL_TIMEOUT} s")
        return box[0] if box else None

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closing

    # ------------------------------------------------------------ the loop (proxy thread only)
    def _run(self) -> None:
        try:
            while True:
                for key, mask in self._sel.select(SELECT_TIMEOUT):
                    tag = key.data
                    if tag == "wake":
                        self._drain_wake()
                    elif tag == "listen":
                        self._accept()
                    else:
                        pair: _Pair = tag
                        if pair.client.fileno() < 0:
                            continue  # closed earlier in this round
                        self._service(pair, key.fileobj, mask)
                if self._do_commands():
                    return
        finally:
            self._shutdown()

    def _unique_pairs(self) -> list[_Pair]:
        """Each pair once (``_pairs`` holds it under both its sockets)."""
        return list({id(p): p for p in self._pairs.values()}.values())

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _do_commands(self) -> bool:
        """Carry out queued control commands; True when the loop must end."""
        while True:
            try:
                what, done, box = self._commands.get_nowait()
            except queue.Empty:
                return False
            if what == "close":
                return True
            if what == "count":
                box.append(len(self._unique_pairs()))
            else:
                old, self.mode = self.mode, what
                if what == CUT:
                    for pair in self._unique_pairs():
                        self._close_pair(pair)
                        with self._lock:
                            self.stats["closed_by_cut"] += 1
                if old != what:
                    for pair in self._unique_pairs():
                        self._update_interest(pair)
            if done is not None:
                done.set()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if self.mode == CUT:
                with self._lock:
                    self.stats["refused"] += 1
                client.close()
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = upstream.connect_ex(self.target)
            if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                with self._lock:
                    self.stats["upstream_failed"] += 1
                upstream.close()
                client.close()
                continue
            with self._lock:
                self.stats["accepted"] += 1
            pair = _Pair(client, upstream)
            pair.connected = err == 0
            self._pairs[client] = pair
            self._pairs[upstream] = pair
            self._update_interest(pair)

    def _service(self, pair: _Pair, sock: socket.socket, mask: int) -> None:
        if not pair.connected:
            if sock is pair.upstream and mask & selectors.EVENT_WRITE:
                err = pair.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    with self._lock:
                        self.stats["upstream_failed"] += 1
                    self._close_pair(pair)
                    return
                pair.connected = True
                self._update_interest(pair)
            return
        if self.mode != NORMAL:
            return
        try:
            if mask & selectors.EVENT_READ:
                half = pair.up if sock is pair.client else pair.down
                self._read(half)
            if mask & selectors.EVENT_WRITE:
                half = pair.down if sock is pair.client else pair.up
                self._write(half)
        except OSError:
            self._close_pair(pair)
            return
        if pair.up.shut and pair.down.shut:
            self._close_pair(pair)
            return
        self._update_interest(pair)

    def _read(self, half: _Half) -> None:
        try:
            data = half.src.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            half.eof = True
        else:
            half.buf += data
        self._write(half)

    def _write(self, half: _Half) -> None:
        if half.buf:
            try:
                n = half.dst.send(half.buf)
            except (BlockingIOError, InterruptedError):
                n = 0
            if n:
                del half.buf[:n]
                with self._lock:
                    self.stats[half.counter] += n
        if half.eof and not half.buf and not half.shut:
            half.shut = True
            try:
                half.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _update_interest(self, pair: _Pair) -> None:
        if pair.client.fileno() < 0:
            return
        interest = {pair.client: 0, pair.upstream: 0}
        if not pair.connected:
            interest[pair.upstream] = selectors.EVENT_WRITE
        elif self.mode == NORMAL:
            for half in (pair.up, pair.down):
                if not half.eof and len(half.buf) < BUF_LIMIT:
                    interest[half.src] |= selectors.EVENT_READ
                if half.buf or (half.eof and not half.shut):
                    interest[half.dst] |= selectors.EVENT_WRITE
        for sock, events in interest.items():
            # selectors cannot hold a zero mask: a socket with no interest is unregistered.
            key = self._sel.get_map().get(sock)
            if events == 0:
                if key is not None:
                    self._sel.unregister(sock)
            elif key is None:
                self._sel.register(sock, events, pair)
            elif key.events != events:
                self._sel.modify(sock, events, pair)

    def _close_pair(self, pair: _Pair) -> None:
        for sock in pair.socks():
            if sock.fileno() >= 0 and sock in self._sel.get_map():
                self._sel.unregister(sock)
            self._pairs.pop(sock, None)
            try:
                sock.close()
            except OSError:
                pass

    def _shutdown(self) -> None:
        for pair in self._unique_pairs():
            self._close_pair(pair)
        self._pairs.clear()
        for sock in (self._listener, self._wake_r):
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._sel.close()
        with self._lock:
            self._closed = True
        # Release anyone still waiting on a command.
        while True:
            try:
                _what, done, _box = self._commands.get_nowait()
            except queue.Empty:
                break
            if done is not None:
                done.set()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import signal
    ap = argparse.ArgumentParser(prog="python -m walswitch.linkproxy",
                                 description="TCP proxy on 127.0.0.1 whose link can be cut or stalled.")
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_port", type=int)
    ap.add_argument("--target-host", default="127.0.0.1")
    args = ap.parse_args(argv)
    proxy = LinkProxy(args.target_port, args.target_host, listen_port=args.listen_port)
    stop = threading.Event()

    def on_signal(_signo, _frame):
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    print(f"linkproxy: 127.0.0.1:{proxy.port} -> {args.target_host}:{args.target_port}; "
          f"commands on stdin: cut, stall, resume, status, quit", flush=True)
    try:
        for line in sys.stdin:
            cmd = line.strip().lower()
            if cmd in ("cut", "stall", "resume"):
                getattr(proxy, cmd)()
                print(f"linkproxy: {proxy.mode}", flush=True)
            elif cmd == "status":
                print(f"linkproxy: {proxy.mode}, {proxy.connections()} connections, {proxy.stats}", flush=True)
            elif cmd in ("quit", "exit"):
                break
            elif cmd:
                print(f"linkproxy: unknown command {cmd!r}", file=sys.stderr, flush=True)
        else:
            while not stop.wait(3600):  # stdin closed: run until a signal
                pass
    except KeyboardInterrupt:
        pass
    finally:
        proxy.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
