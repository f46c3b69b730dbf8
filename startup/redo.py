"""Replay of WAL records into the key/value store.

A transaction's KV records are buffered by xid and applied at its commit
record, together with the commit's end LSN, in one SQLite transaction (see
storage/kvstore.py); an abort drops the buffer.  A commit whose end LSN is
not beyond the store's ``applied_lsn`` was applied before a crash and is
skipped, so replay from any redo point never applies a transaction twice and
never skips one.  Commits are batched (``apply_many``) for speed; ``flush``
applies the batch and must be called before anything reports a replay
position.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from xlog import constants as C
from xlog.record import DecodedRecord, KvDelete, kv_put_fields

# Hot-loop constants as plain globals.
_RM_KV = C.RM_KV_ID
_RM_XLOG = C.RM_XLOG_ID
_RM_XACT = C.RM_XACT_ID
_INFO_MASK = C.XLR_RMGR_INFO_MASK
_KV_PUT = C.KV_PUT
_KV_DELETE = C.KV_DELETE
_KV_ROLE = C.KV_ROLE
_XACT_OPMASK = C.XLOG_XACT_OPMASK
_COMMIT = C.XLOG_XACT_COMMIT


@dataclass
class Redo:
    store: object                    # storage.kvstore.KVStore
    tli: int
    applied_lsn: int = 0
    pending: list = field(default_factory=list)       # [(changes, end_lsn)]
    open_xacts: dict[int, list] = field(default_factory=dict)
    max_xid: int = 0
    last_end_lsn: int = 0            # end of the last record replayed
    batch: int = 1024
    flushes: int = 0                 # batches applied so far (callers publish when it moves)

    def __post_init__(self) -> None:
        self.applied_lsn = self.store.applied_lsn()

    def apply(self, rec: DecodedRecord) -> None:
        """Replay one record of any kind."""
        if rec.rmid != _RM_XLOG:
            self.apply_records((rec,), 0)
            return
        if rec.xid > self.max_xid:
            self.max_xid = rec.xid
        if rec.rm_info in (C.XLOG_CHECKPOINT_SHUTDOWN, C.XLOG_END_OF_RECOVERY):
            # Nothing survives a shutdown or an end of recovery: transactions still
            # open here were lost in a crash of the primary and will never commit.
            self.open_xacts.clear()
        self.last_end_lsn = rec.next_lsn

    def apply_records(self, recs: Sequence[DecodedRecord], i: int) -> int:
        """Replay recs[i:] up to the first XLOG record (left for the caller); its index, or len(recs).

        Replay's hot loop: KV records decoded without a dataclass per row
        (``kv_put_fields``), commits queued for the batch apply.
        """
        open_xacts = self.open_xacts
        pending = self.pending
        max_xid = self.max_xid
        n = len(recs)
        try:
            while i < n:
                rec = recs[i]
                rmid = rec.rmid
                if rmid == _RM_XLOG:
                    break
                xid = rec.xid
                if xid > max_xid:
                    max_xid = xid
                if rmid == _RM_KV:
                    op = rec.info & _INFO_MASK
                    data = rec.main_data
                    if op == _KV_PUT:
                        change = ("put", *kv_put_fields(data))
                    elif op == _KV_DELETE:
                        change = ("delete", KvDelete.unpack(data).key, None)
                    elif op == _KV_ROLE:
                        change = ("role", *kv_put_fields(data))
                    else:
                        change = None
                    if change is not None:
                        changes = open_xacts.get(xid)
                        if changes is None:
                            open_xacts[xid] = [change]
                        else:
                            changes.append(change)
                elif rmid == _RM_XACT:
                    changes = open_xacts.pop(xid, None)
                    if (rec.info & _XACT_OPMASK) == _COMMIT and changes and rec.next_lsn > self.applied_lsn:
                        pending.append((changes, rec.next_lsn))
                        if len(pending) >= self.batch:
                            self.flush()
                            pending = self.pending
                self.last_end_lsn = rec.next_lsn
                i += 1
        finally:
            self.max_xid = max_xid
        return i

    def flush(self) -> None:
        if self.pending:
            self.store.apply_many(self.pending, self.tli)
            self.applied_lsn = self.pending[-1][1]
            self.pending = []
            self.flushes += 1

    @property
    def oldest_open_lsn(self) -> int | None:
        """Not tracked per record here; restartpoints use the reader position."""
        return None
