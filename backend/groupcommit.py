"""Group commit in the backend: which logged commits are durable, applied and answered.

A session's commit record is inserted by ``Backend.log_commit``; the session
then waits (``CommitWait``) in ``commit_queue`` and in ``unapplied``.  Making
them durable is one fdatasync for everything inserted so far, in one of two
ways:

* in the background (``start_flush``): the WAL writer's syncer thread runs the
  fdatasync while this loop serves the other sessions; the loop starts one as
  soon as a commit is queued and other clients wait, even in the middle of a
  round, so the next group forms during this group's fdatasync (PostgreSQL's
  backends do the same, each in its own XLogFlush).  The syncer's pipe wakes
  the loop; ``collect_flush`` takes the result;
* inline (``apply_pending``), when nobody else waits (a lone commit saves the
  thread hand-off), and for whoever needs everything durable and applied now
  (a checkpoint, a WAL switch, shutdown).

Either way, once the flush position moves: publish it and wake the walsenders
(before the store is touched, as PostgreSQL wakes them right after XLogFlush),
apply the commits it covers to the store in WAL order (one SQLite
transaction), then answer their sessions.  A commit is never answered before
its WAL is durable, nor before it is visible to the next statement of any
session.
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
    walsync_fd: int | None   # the syncer's pipe, registered with the selector (Backend.start_primary)
    _writer: Any             # Backend._writer(): the WalWriter, or a Panic on a standby

    def queue_commit(self, conn: Connection, w: CommitWait) -> None:
        self.commit_queue.append((conn, w))
        self.unapplied.append(w)

    def apply_pending(self) -> None:
        """Flush all WAL (after any background flush in flight) and apply every logged commit."""
        if not self.unapplied:
            return
        w = self._writer()
        try:
            w.flush()
        except OSError as e:
            raise Panic(f"could not fdatasync WAL: {e}") from e
        self.commits_durable()

    def group_commit(self) -> None:
        """Answer the commits that are durable and applied; make the others durable."""
        w = self.writer
        if w is None:
            if self.commit_queue:
                self.apply_pending()      # a Panic: a standby logs no commits
            return
        self.collect_flush()
        if self.commit_queue and not w.flush_in_flight:
            if self.others_waiting():
                self.start_flush()
            else:
                self.apply_pending()
        self.answer_commits()

    def start_flush(self) -> None:
        """Begin a background flush of everything inserted, unless one is running already."""
        w = self.writer
        if w is None or w.flush_in_flight:
            return
        try:
            started = w.begin_flush()
        except OSError as e:
            raise Panic(f"could not write to WAL: {e}") from e
        if not started:
            self.commits_durable()

    def collect_flush(self) -> None:
        w = self.writer
        try:
            target = w.finish_flush(wait=False) if w is not None else None
        except OSError as e:
            raise Panic(f"could not fdatasync WAL: {e}") from e
        if target is not None:
            self.commits_durable()

    def others_waiting(self) -> bool:
        """Is any client's input (or a new connection) ready right now?"""
        try:
            return any(mask & selectors.EVENT_READ and key.data not in ("death", "signal", "walsync")
                       for key, mask in self.sel.select(0))
        except OSError:
            return False

    def commits_durable(self) -> None:
        """The flush position moved: publish it, then apply the commits it covers, in WAL order."""
        w = self._writer()
        self.publish()
        flushed = w.flush_lsn
        n = 0
        for cw in self.unapplied:
            if cw.end_lsn > flushed:
                break
            n += 1
        if not n:
            return
        batch, self.unapplied = self.unapplied[:n], self.unapplied[n:]
        try:
            self.store.apply_many([(cw.txn.changes, cw.end_lsn) for cw in batch if cw.txn.changes], w.tli,
                                  must_apply=True)
        except Exception as e:
            raise Panic(f"could not apply committed transactions to the key/value store: {e}") from e
        for cw in batch:
            cw.applied = True

    def answer_commits(self) -> None:
        """Resume the sessions whose commits are applied, oldest first (the queue is in WAL order)."""
        n = 0
        for _conn, cw in self.commit_queue:
            if not cw.applied:
                break
            n += 1
        if n:
            batch, self.commit_queue = self.commit_queue[:n], self.commit_queue[n:]
            for conn, _w in batch:
                conn.after_commit()

    def flush_early(self, more_events: bool) -> None:
        """Mid-round, after serving one client: if it queued a commit and more clients wait in this
        round, start the fdatasync now so that they are served while it runs."""
        if more_events and self.commit_queue and self.writer is not None and not self.writer.flush_in_flight \
                and not self.commit_queue[-1][1].applied:
            self.start_flush()

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
