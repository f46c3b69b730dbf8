"""Replay's batched paths give exactly what one record at a time gives.

Redo.apply_records (the startup's hot loop) against Redo.apply per record and
against a plain dict model; KVStore.apply_many's grouped statements against
the changes one by one; the background SQLite checkpointer of the startup's
store.  Real SQLite files, real WAL written by WalWriter and read back.
"""
from __future__ import annotations

import os
import sqlite3
import tempfile
import threading

import pytest
from hypothesis import given, settings, strategies as st

from storage.kvstore import KVStore
from startup.redo import Redo
from tests.cluster import wait_for
from xlog import constants as C
from xlog.reader import WalReader
from xlog.record import (CheckPoint, KvDelete, KvPut, abort_record, checkpoint_record, commit_record,
                         kv_delete_record, kv_put_record)
from xlog.writer import WalWriter

SEG = 1024 * 1024
START = SEG
KEYS = st.one_of(st.sampled_from(["a", "b", "é", "k" * 300]), st.text(min_size=1, max_size=4))
VALUES = st.one_of(st.none(), st.text(max_size=40), st.sampled_from(["", "v" * 5000]))
CHANGE = st.one_of(st.tuples(st.just("put"), KEYS, VALUES), st.tuples(st.just("delete"), KEYS, st.none()))
# A transaction: its changes, then commit, abort or nothing (left open, as a crash leaves it).
TXN = st.tuples(st.lists(CHANGE, max_size=4), st.sampled_from(["commit", "commit", "commit", "abort", "open"]))


def write_workload(d: str, txns: list, rnd, checkpoints: int) -> tuple[dict, int]:
    """Write the transactions as WAL, interleaved at random (each one's records in order),
    with online checkpoints at random places.  Returns the table the committed
    transactions make and the end of the last commit that changed something (the
    store's applied_lsn after replay)."""
    w = WalWriter(d, 1, SEG, 1, START, 0)
    queues = []
    for i, (changes, outcome) in enumerate(txns):
        xid = 100 + i
        recs = [kv_put_record(xid, k, v) if op == "put" else kv_delete_record(xid, k) for op, k, v in changes]
        if outcome != "open":
            recs.append(commit_record(xid) if outcome == "commit" else abort_record(xid))
        queues.append([(xid, outcome, changes, spec) for spec in recs])
    queues.extend([[(0, "checkpoint", [], None)] for _ in range(checkpoints)])
    table: dict = {}
    applied = 0
    while queues := [q for q in queues if q]:
        q = rnd.choice(queues)
        xid, outcome, changes, spec = q.pop(0)
        if outcome == "checkpoint":
            spec = checkpoint_record(CheckPoint(redo=w.insert_lsn, this_tli=1, prev_tli=1), shutdown=False)
        end = w.insert(*spec)[1]
        if spec[0] == C.RM_XACT_ID and outcome == "commit" and changes:
            for op, k, v in changes:
                if op == "put":
                    table[k] = v
                else:
                    table.pop(k, None)
            applied = end
    w.close()
    return table, applied


def read_batches(d: str, limit: int) -> list[list]:
    r = WalReader.from_dir(d, SEG, 1, START)
    out = []
    while recs := r.read_records(limit):
        out.append(recs)
    assert r.error is None or "invalid record length" in r.error, r.error
    return out


def replay(d: str, batches: list[list], batched: bool, batch: int) -> tuple[dict, int, int]:
    store = KVStore(os.path.join(d, "kv.sqlite"))
    redo = Redo(store, 1)
    redo.batch = batch
    for recs in batches:
        if batched:
            i = 0
            while i < len(recs):
                i = redo.apply_records(recs, i)
                if i < len(recs):
                    assert recs[i].rmid == C.RM_XLOG_ID     # left for the caller
                    redo.apply(recs[i])
                    i += 1
        else:
            for rec in recs:
                redo.apply(rec)
    redo.flush()
    out = dict(store.items()), store.applied_lsn(), redo.last_end_lsn
    store.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(os.path.join(d, "kv.sqlite" + suffix))
        except FileNotFoundError:
            pass
    return out


@pytest.mark.timeout(240)
@settings(max_examples=80, deadline=None)
@given(txns=st.lists(TXN, min_size=1, max_size=40), rnd=st.randoms(use_true_random=False),
       checkpoints=st.integers(0, 3), limit=st.integers(1, 50), batch=st.integers(1, 8))
def test_apply_records_matches_apply_and_model(txns: list, rnd, checkpoints: int, limit: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        table, applied = write_workload(d, txns, rnd, checkpoints)
        batches = read_batches(d, limit)
        one = replay(d, batches, batched=False, batch=batch)
        many = replay(d, batches, batched=True, batch=batch)
        assert many == one
        assert many[0] == table and many[1] == applied


@pytest.mark.timeout(60)
def test_apply_records_reports_bad_kv_data() -> None:
    """A KV record whose lengths do not add up fails with KvPut's message, not an IndexError."""
    with tempfile.TemporaryDirectory() as d:
        w = WalWriter(d, 1, SEG, 1, START, 0)
        good = KvPut("k", "value").pack()
        w.insert(C.RM_KV_ID, C.KV_PUT, 5, good[:-2])          # value two bytes short
        w.close()
        recs = read_batches(d, 10)[0]
        store = KVStore(os.path.join(d, "kv.sqlite"))
        try:
            with pytest.raises(Exception, match="KV_PUT record data has length"):
                Redo(store, 1).apply_records(recs, 0)
            with pytest.raises(Exception, match="KV_DELETE record data"):
                bad = recs[0]._replace(info=C.KV_DELETE, main_data=KvDelete("k").pack()[:-1])
                Redo(store, 1).apply_records([bad], 0)
        finally:
            store.close()


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None)
@given(txns=st.lists(st.lists(CHANGE, max_size=6), min_size=1, max_size=20))
def test_apply_many_runs_equal_changes_in_order(txns: list) -> None:
    """Grouping runs of puts and deletes into statements keeps the order's effect."""
    with tempfile.TemporaryDirectory() as d:
        model: dict = {}
        for changes in txns:
            for op, k, v in changes:
                if op == "put":
                    model[k] = v
                else:
                    model.pop(k, None)
        store = KVStore(os.path.join(d, "kv.sqlite"))
        try:
            n = store.apply_many([(changes, 100 + 8 * i) for i, changes in enumerate(txns)], 1)
            assert n == len(txns)
            assert dict(store.items()) == model and store.applied_lsn() == 100 + 8 * (len(txns) - 1)
        finally:
            store.close()


# Runs of puts across the multi-row INSERT sizes (kvstore._PUT_CHUNKS: 256, 16), few keys so
# that one statement often puts the same key twice.
LONG_PUTS = st.lists(st.tuples(st.just("put"), st.one_of(st.sampled_from(["a", "b", "é", "k" * 300]),
                                                         st.text(min_size=1, max_size=2)), VALUES),
                     min_size=0, max_size=600)


@pytest.mark.timeout(180)
@settings(max_examples=40, deadline=None)
@given(runs=st.lists(LONG_PUTS, min_size=1, max_size=3), split=st.integers(1, 3))
def test_long_put_runs_equal_rows_one_by_one(runs: list, split: int) -> None:
    """Long runs of puts (multi-row INSERTs) end as the rows one by one, in any batch split."""
    changes: list = []
    for run in runs:
        changes += run + [("delete", "a", None)]
    model: dict = {}
    for op, k, v in changes:
        if op == "put":
            model[k] = v
        else:
            model.pop(k, None)
    step = -(-len(changes) // split)
    with tempfile.TemporaryDirectory() as d:
        store = KVStore(os.path.join(d, "kv.sqlite"))
        try:
            store.apply_many([(changes[i:i + step], 100 + i) for i in range(0, len(changes), step)], 1)
            assert dict(store.items()) == model
        finally:
            store.close()


@pytest.mark.timeout(60)
def test_background_checkpointer_copies_wal_and_stops(tmp_path) -> None:
    path = str(tmp_path / "kv.sqlite")
    store = KVStore(path)
    store.checkpoint_in_background(interval=0.01)
    # The writer itself never checkpoints now.
    assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    size0 = os.path.getsize(path)
    lsn = 0
    for i in range(40):
        lsn += 8
        store.apply([("put", f"k{i}-{j}", "x" * 500) for j in range(50)], lsn, 1)
    # Pages reach the database file while the writer's connection stays open: the thread did it.
    wait_for(lambda: os.path.getsize(path) > size0 + 500_000, 30, "the background checkpoint")
    assert any(t.name == "sqlite-checkpointer" for t in threading.enumerate())
    reader = sqlite3.connect(path)
    try:
        assert reader.execute("SELECT count(*) FROM kv").fetchone()[0] == 2000
    finally:
        reader.close()
    store.close()
    assert not any(t.name == "sqlite-checkpointer" for t in threading.enumerate())
    with KVStore(path) as again:
        assert again.count() == 2000 and again.applied_lsn() == lsn


@pytest.mark.timeout(60)
def test_failed_checkpointer_hands_checkpoints_back_to_the_writer(tmp_path) -> None:
    store = KVStore(str(tmp_path / "kv.sqlite"))
    try:
        store.checkpoint_in_background(interval=0.01)
        ckpt = store._checkpointer
        ckpt.conn.close()                  # its next checkpoint fails
        store.apply([("put", "a", "1")], 8, 1)
        wait_for(lambda: ckpt.error is not None, 10, "the checkpointer thread to fail")
        store.apply([("put", "b", "2")], 16, 1)
        assert store._checkpointer is None and not ckpt.thread.is_alive()
        assert store.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
        assert store.items() == [("a", "1"), ("b", "2")]
    finally:
        store.close()
