"""Replay of WAL records into the key/value store.

A transaction's KV records are buffered by xid and applied at its commit
record, together with the commit's end LSN, in one SQLite transaction (see
primary/kvstore.py); an abort drops the buffer.  A commit whose end LSN is
not beyond the store's ``applied_lsn`` was applied before a crash and is
skipped, so replay from any redo point never applies a transaction twice and
never skips one.  Commits are batched (``apply_many``) for speed; ``flush``
applies the batch and must be called before anything reports a replay
position.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from xlog import constants as C
from xlog.record import DecodedRecord, KvDelete, KvPut


@dataclass
class Redo:
    store: object                    # primary.kvstore.KVStore
    tli: int
    applied_lsn: int = 0
    pending: list = field(default_factory=list)       # [(changes, end_lsn)]
    open_xacts: dict[int, list] = field(default_factory=dict)
    max_xid: int = 0
    last_end_lsn: int = 0            # end of the last record replayed
    batch: int = 256

    def __post_init__(self) -> None:
        self.applied_lsn = self.store.applied_lsn()

    def apply(self, rec: DecodedRecord) -> None:
        if rec.xid > self.max_xid:
            self.max_xid = rec.xid
        if rec.rmid == C.RM_KV_ID:
            op = rec.info & C.XLR_RMGR_INFO_MASK
            if op == C.KV_PUT:
                p = KvPut.unpack(rec.main_data)
                change = ("put", p.key, p.value)
            elif op == C.KV_DELETE:
                change = ("delete", KvDelete.unpack(rec.main_data).key, None)
            else:
                return
            self.open_xacts.setdefault(rec.xid, []).append(change)
        elif rec.rmid == C.RM_XACT_ID:
            op = rec.info & C.XLOG_XACT_OPMASK
            changes = self.open_xacts.pop(rec.xid, [])
            if op == C.XLOG_XACT_COMMIT and rec.next_lsn > self.applied_lsn and changes:
                self.pending.append((changes, rec.next_lsn))
                if len(self.pending) >= self.batch:
                    self.flush()
        elif rec.rmid == C.RM_XLOG_ID and rec.rm_info in (C.XLOG_CHECKPOINT_SHUTDOWN, C.XLOG_END_OF_RECOVERY):
            # Nothing survives a shutdown or an end of recovery: transactions still
            # open here were lost in a crash of the primary and will never commit.
            self.open_xacts.clear()
        self.last_end_lsn = rec.next_lsn

    def flush(self) -> None:
        if self.pending:
            self.store.apply_many(self.pending, self.tli)
            self.applied_lsn = self.pending[-1][1]
            self.pending = []

    @property
    def oldest_open_lsn(self) -> int | None:
        """Not tracked per record here; restartpoints use the reader position."""
        return None
