"""The load of a comparison run: writer threads committing single-row INSERTs into ``kv``.

The same generator drives walswitch and PostgreSQL (same statements, same
rate, same row size), and it remembers what the server acknowledged: each
commit writes a key of its own (``w<writer>-<n>``), so that after the run
"no commit lost" is a set inclusion and "no commit doubled" a count.  A
statement that failed mid-way (the primary went away) may or may not have
committed: its key goes to ``uncertain`` and is allowed either way.

Threads: ``writers`` writer threads, started by ``on()`` and stopped (joined,
bounded) by ``off()``.  ``retarget(port)`` sends new connections elsewhere
(after ``promote``); writers reconnect on any error, every 0.1 s.
"""
from __future__ import annotations

import contextlib
import threading
import time

import psycopg2


class Load:
    def __init__(self, port: int, writers: int = 4, rate: float = 200.0, row_size: int = 200) -> None:
        self.port = port
        self.writers = writers
        self.rate = rate
        self.row_size = row_size
        self.lock = threading.Lock()
        self.acked: set[str] = set()         # keys whose commit the server acknowledged
        self.uncertain: set[str] = set()     # statements that failed: committed or not
        self.errors = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next = [0] * writers           # the next key number per writer (survives off/on)

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def retarget(self, port: int) -> None:
        self.port = port

    def on(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self._threads = [threading.Thread(target=self._writer, args=(i,), name=f"load-{i}", daemon=True)
                         for i in range(self.writers)]
        for t in self._threads:
            t.start()

    def off(self, timeout: float = 15.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self._threads = []

    def committed(self) -> int:
        with self.lock:
            return len(self.acked)

    def _writer(self, idx: int) -> None:
        conn = None
        value = "v" * self.row_size
        interval = self.writers / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        port = None
        while not self._stop.is_set():
            key = f"w{idx}-{self._next[idx]}"
            try:
                if conn is None or port != self.port:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                    port = self.port
                    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                                            connect_timeout=2)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO kv VALUES (%s, %s)", (key, value))
                with self.lock:
                    self.acked.add(key)
                self._next[idx] += 1
            except psycopg2.Error:
                if conn is not None:
                    with self.lock:
                        self.uncertain.add(key)
                    self._next[idx] += 1      # never reuse a key whose fate is unknown
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None
                with self.lock:
                    self.errors += 1
                self._stop.wait(0.1)
                continue
            if interval:
                next_at = max(next_at + interval, time.monotonic() - 1.0)
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
