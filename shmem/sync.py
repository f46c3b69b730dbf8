"""Mutexes and latches built on POSIX named semaphores.

Pure Python has no atomic compare-and-swap on shared memory, so every region
of the segment is guarded by a semaphore whose initial value is 1 (a mutex).
A *latch* is one semaphore per process: ``set`` releases it (at most once
while unconsumed), ``wait`` acquires it with a timeout and then drains it, so
any number of sets between two waits cost one wake-up, as PostgreSQL's
latches.

``posix_ipc`` raises ``SignalError`` when a signal interrupts ``acquire``; the
helpers retry with the remaining time, so a signal handler that only sets a
flag never breaks a wait.

A process killed while it holds a mutex leaves it taken.  Nobody tries to
repair that: the postmaster treats such a death as a crash and recreates all
semaphores (see postmaster/).  A bounded ``acquire`` turns a stuck mutex into
``LockTimeout`` instead of a silent hang.
"""
from __future__ import annotations

import os
import select
import threading
import time

import posix_ipc


class LockTimeout(RuntimeError):
    """A region mutex could not be taken in time (its holder probably died)."""


def sem_acquire(sem: posix_ipc.Semaphore, timeout: float | None) -> bool:
    """Acquire, retrying after signals.  Returns False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            sem.acquire(remaining)
            return True
        except posix_ipc.BusyError:
            return False
        except posix_ipc.SignalError:
            if deadline is not None and time.monotonic() >= deadline:
                return False


class Mutex:
    """A region lock: a semaphore with initial value 1."""

    def __init__(self, sem: posix_ipc.Semaphore, name: str, timeout: float = 10.0):
        self.sem = sem
        self.name = name
        self.timeout = timeout
        self._held = _Held(self)

    def acquire(self) -> None:
        try:
            self.sem.acquire(0)      # uncontended, the usual case: no clock reads, no timer
        except (posix_ipc.BusyError, posix_ipc.SignalError):
            if not sem_acquire(self.sem, self.timeout):
                raise LockTimeout(f"could not acquire {self.name} lock within {self.timeout:g} s") from None

    def release(self) -> None:
        self.sem.release()

    def held(self) -> "_Held":
        """``with mutex.held():`` (a plain context manager: this is on every hand-over's path)."""
        return self._held


class _Held:
    __slots__ = ("mutex",)

    def __init__(self, mutex: Mutex) -> None:
        self.mutex = mutex

    def __enter__(self) -> None:
        self.mutex.acquire()

    def __exit__(self, *exc: object) -> None:
        self.mutex.release()


class Latch:
    """A per-process wake-up flag another process can set."""

    def __init__(self, sem: posix_ipc.Semaphore, name: str):
        self.sem = sem
        self.name = name

    def set(self) -> None:
        # Keep the count at most 1: a waiter drains anyway, and an unbounded
        # count would overflow SEM_VALUE_MAX on a busy producer.
        try:
            if self.sem.value == 0:
                self.sem.release()
        except posix_ipc.ExistentialError:
            pass

    def wait(self, timeout: float | None) -> bool:
        """Sleep until set or timeout; returns True if it was set."""
        woke = sem_acquire(self.sem, timeout)
        self.reset()
        return woke

    def reset(self) -> None:
        while True:
            try:
                self.sem.acquire(0)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                return


class WaitSet:
    """Wait for a latch *or* readable file descriptors.

    Semaphores cannot be polled together with sockets, so a watcher thread
    selects on the descriptors and sets the latch when one becomes readable.
    It then waits to be re-armed by the next ``wait``, so unread input never
    turns into a busy loop.  Create it after fork (threads do not survive
    fork).  ``wait`` returns the set of descriptors that were readable when it
    woke (possibly empty: latch or timeout).
    """

    def __init__(self, latch: Latch, fds: list[int]):
        self.latch = latch
        self.fds = list(fds)
        self._armed = threading.Event()
        self._ready: set[int] = set()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._watch, name="waitset", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._closed:
            self._armed.wait()
            if self._closed:
                return
            try:
                readable, _, _ = select.select(self.fds + [self._wake_r], [], [])
            except (OSError, ValueError):
                readable = list(self.fds)
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
                readable = [fd for fd in readable if fd != self._wake_r]
                if not readable:
                    continue
            with self._lock:
                self._ready.update(readable)
            self._armed.clear()
            self.latch.set()

    def wait(self, timeout: float | None) -> set[int]:
        # Cheap check first: data may already be waiting.
        try:
            readable, _, _ = select.select(self.fds, [], [], 0)
        except (OSError, ValueError):
            readable = list(self.fds)
        if readable:
            return set(readable)
        self._armed.set()
        self.latch.wait(timeout)
        with self._lock:
            ready, self._ready = self._ready, set()
        return ready

    def close(self) -> None:
        self._closed = True
        self._armed.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(1.0)
        os.close(self._wake_r)
        os.close(self._wake_w)
