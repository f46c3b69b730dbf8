"""Group commit in the backend: which logged commits are durable, applied and answered.

A session's commit record is inserted by ``Backend.log_commit``; the session
then waits (``CommitWait``) in ``commit_queue`` and in ``unapplied``.  Each
loop round ``group_commit`` makes everything inserted durable with one
fdatasync (``apply_pending``), publishes the flush position (walsenders
woken before the store is touched, as PostgreSQL wakes them right after
XLogFlush), applies the commits to the store in WAL order (one SQLite
transaction) and answers their sessions.  A commit is never answered before
its WAL is durable, nor before it is visible to the next statement of any
session.  ``apply_pending`` alone is what a checkpoint or a segment switch
needs first.

The fdatasync stays here, inline.  Handing it to a thread so that this loop
serves the next group meanwhile was built twice and measured
(``python -m bench.pgbench_tps --before DIR``, 3 x 10 s, 4 clients): flushing
in a thread when other clients wait gained nothing (5,038 vs 5,059 commits/s
-M simple); starting it as soon as the first commit of a round is queued lost
a quarter (3,805 vs 5,119 simple, 3,732 vs 4,976 prepared): smaller groups,
more fdatasyncs, and a thread hand-off on each.
"""
from __future__ import annotations

import selectors
from typing import Any

from backend.session import Connection
from backend.waits import CommitWait, Panic


class GroupCommit:
    """Mixed into Backend, which owns these attributes."""

    writer: Any              # xlog.writer.WalWriter | None
    store: Any               # storage.kvstore.KVStore
    sel: selectors.BaseSelector
    shared: Any
    trace: Any
    commit_queue: list[tuple[Connection, CommitWait]]
    unapplied: list[CommitWait]
    _writer: Any             # Backend._writer(): the WalWriter, or a Panic on a standby

    def queue_commit(self, conn: Connection, w: CommitWait) -> None:
        self.commit_queue.append((conn, w))
        self.unapplied.append(w)

    def apply_pending(self) -> None:
        """Flush WAL and apply every logged-but-unapplied commit (one SQLite transaction)."""
        if not self.unapplied:
            return
        batch, self.unapplied = self.unapplied, []
        w = self._writer()
        try:
            w.flush()
        except OSError as e:
            raise Panic(f"could not fdatasync WAL: {e}") from e
        # The WAL is durable: the walsenders may send it now, while we apply it here
        # (PostgreSQL wakes them right after XLogFlush too).
        self.publish()
        try:
            self.store.apply_many([(cw.txn.changes, cw.end_lsn) for cw in batch if cw.txn.changes], w.tli,
                                  must_apply=True)
        except Exception as e:
            raise Panic(f"could not apply committed transactions to the key/value store: {e}") from e

    def group_commit(self) -> None:
        """Make everything inserted durable with one fdatasync, apply it, then answer the sessions."""
        while self.commit_queue:
            self.apply_pending()
            batch, self.commit_queue = self.commit_queue, []
            for conn, _w in batch:
                conn.after_commit()

    def publish(self) -> None:
        """Positions to shared memory, then wake the walsenders."""
        w = self.writer
        if w is None:
            return
        if self.trace.on:
            self.trace.note("primary_flushed", w.flush_lsn)
        with self.shared.xlog.locked() as x:
            x.set(insert_lsn=w.insert_lsn, write_lsn=w.write_lsn, flush_lsn=w.flush_lsn,
                  last_record_lsn=w.prev_lsn)
        for i, slot in enumerate(self.shared.walsnd):
            if slot.get("pid"):
                self.shared.walsnd_latches[i].set()
