"""A large committed batch applied to the key/value store in a thread: the slow half of group commit.

Group commit (backend/backend.py ``group_commit``) flushes WAL, applies the batch's changes to
SQLite, then answers the sessions.  A batch carrying megabytes (one 16 MiB value costs SQLite about
50 ms) would hold the one loop all that time; SQLite releases the GIL while it writes, so a batch of
at least ``BIG_BATCH`` bytes is applied here, on a second connection, while the loop goes on serving
the other sessions.  Commits that arrive meanwhile wait behind it (the store applies in commit order,
its ``applied_lsn`` only moves forward) and go in the next batch.  Small batches stay on the loop.

The WAL's fdatasync runs in the thread too (WalWriter.begin_flush / end_flush split it): with
the disk busy it is the longer half.
States: idle -> ``start`` -> running (``busy``) -> ``poll`` returns the waiting sessions -> idle.
Who wakes whom: the thread's ThreadJob writes the backend's self-pipe when it ends.

Only the thread writes while a job runs; the loop's connection only reads (and sees the batch once
committed, when its sessions are answered).  This connection lives as long as the backend's store:
closing one descriptor of a SQLite file drops the process's POSIX locks on it (storage/kvstore.py
``sync``), so both are closed together at the backend's end.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from backend.waits import CommitWait, Panic, ThreadJob
from storage.kvstore import KVStore

BIG_BATCH = 1 << 20        # bytes of keys and values in a batch worth a thread


def batch_bytes(batch: list[CommitWait]) -> int:
    return sum(len(key) + len(value or "") for cw in batch for _op, key, value in cw.txn.changes)


class Applier:
    def __init__(self, path: str):
        self.store = KVStore(path)
        self.job: ThreadJob | None = None
        self.waiting: list[tuple[Any, CommitWait]] = []     # (connection, its commit) answered when done

    @property
    def busy(self) -> bool:
        return self.job is not None

    def start(self, batch: list[CommitWait], waiting: list[tuple[Any, CommitWait]], tli: int,
              wal_fds: list[int], wake: Callable[[], None]) -> None:
        """fdatasync the WAL descriptors (WalWriter.begin_flush's), then apply the batch."""
        assert self.job is None
        changes = [(cw.txn.changes, cw.end_lsn) for cw in batch if cw.txn.changes]
        self.waiting = waiting

        def work() -> None:
            for fd in wal_fds:
                try:
                    os.fdatasync(fd)
                except OSError as e:
                    raise Panic(f"could not fdatasync WAL: {e}") from e
            self.store.apply_many(changes, tli, must_apply=True)
        self.job = ThreadJob(work, wake, "apply")

    def poll(self, block: bool = False) -> list[tuple[Any, CommitWait]] | None:
        """The sessions to answer once the batch is applied; None while it runs (``block``: wait)."""
        job = self.job
        if job is None:
            return []
        if block:
            job.done.wait()
        elif not job.done.is_set():
            return None
        self.job = None
        waiting, self.waiting = self.waiting, []
        if isinstance(job.error, Panic):
            raise job.error
        if job.error is not None:
            raise Panic(f"could not apply committed transactions to the key/value store: {job.error}")
        return waiting

    def close(self) -> None:
        if self.job is not None:
            self.job.done.wait()
            self.job = None
        self.store.close()
