"""The key/value store: table ``kv(key, value)`` in SQLite, ``DIR/base/kv.sqlite``.

What it owns: the applied state of the table and the LSN that state reflects.
``meta`` is one row holding ``applied_lsn`` (end LSN of the last applied
commit record) and ``applied_tli``.  Every apply writes the changes and the
new ``applied_lsn`` in one SQLite transaction, so after any crash the table is
exactly the effect of all commits up to ``applied_lsn``: replay skips a commit
whose end LSN is <= ``applied_lsn`` (``apply`` does that check itself) and
applies the rest, never twice, never skipping one.

Who writes: exactly one process at a time: the backend on a primary (at group
commit), the startup process during recovery.  Readers in other processes (the
hot-standby backend) see consistent snapshots through SQLite's WAL mode: each
read statement sees whole transactions only.  Readers run in autocommit mode,
so they never pin an old snapshot.

Durability: ``synchronous=NORMAL`` in WAL mode: a commit survives a process
crash (it is in SQLite's -wal file) but may be lost on power loss; that is
fine because our WAL is fsynced before anything is applied, and a checkpoint
calls ``sync()`` before it moves the redo pointer past the changes.
"""
from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from itertools import chain, groupby
from operator import itemgetter

from storage import roles as _roles
from xlog.durable import fsync_dir
from xlog.lsn import format_lsn

KV_RELPATH = os.path.join("base", "kv.sqlite")

Change = tuple[str, str, "str | None"]      # (op 'put'|'delete', key, value)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY NOT NULL, value TEXT) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " applied_lsn INTEGER NOT NULL, applied_tli INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (id, applied_lsn, applied_tli) VALUES (1, 0, 0)",
    _roles.SCHEMA,
)
# Bound to a change triple (op, key, value): ?1, the op, is not used (SQLite counts
# parameters up to the highest number, so the triple binds as it is).
_UPSERT = ("INSERT INTO kv (key, value) VALUES (?2, ?3) "
           "ON CONFLICT (key) DO UPDATE SET value = excluded.value")
_DELETE = "DELETE FROM kv WHERE key = ?"
# Long runs of puts (replay's batches: thousands of rows) go as multi-row INSERTs of these
# many rows, largest first; what is left (fewer than the smallest) goes row by row as _UPSERT.
_PUT_CHUNKS = (256, 16)


@functools.lru_cache(maxsize=None)
def _multi_upsert(rows: int) -> str:
    """_UPSERT for `rows` change triples bound as one flat sequence (the ops, ?1, ?4 ..., unused).

    SQLite inserts the VALUES rows in order, each an upsert of its own, so a key put twice
    ends with the later value, as with the rows one by one.
    """
    values = ",".join(f"(?{3 * r + 2}, ?{3 * r + 3})" for r in range(rows))
    return f"INSERT INTO kv (key, value) VALUES {values} ON CONFLICT (key) DO UPDATE SET value = excluded.value"


_OP = itemgetter(0)


def kv_path(datadir: str) -> str:
    return os.path.join(datadir, KV_RELPATH)


class KVStore:
    """One connection to the store.  ``path`` is the SQLite file or a data directory."""

    def __init__(self, path: str, readonly: bool = False, timeout: float = 30.0):
        if os.path.isdir(path) and not path.endswith(".sqlite"):
            path = kv_path(path)
        self.path = path
        self.readonly = readonly
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # isolation_level=None: autocommit; transactions are explicit BEGIN/COMMIT.
        self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if not readonly:
            self._create_schema()
        self._applied: tuple[int, int] | None = None
        self._checkpointer: _Checkpointer | None = None

    def _create_schema(self) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                c.execute(stmt)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        try:
            self.conn.close()
        except sqlite3.Error:
            pass

    def checkpoint_in_background(self, interval: float = 0.2) -> None:
        """Leave SQLite's checkpoints (copying its -wal into the database) to a thread.

        For the startup process: replay should not stop to write the database
        file, as PostgreSQL's startup leaves that to the checkpointer and the
        background writer.  SQLite runs a checkpoint without holding Python's
        GIL, so on another core it costs replay nothing (about a tenth of
        replay's time when done inline).
        """
        if self._checkpointer is None and not self.readonly:
            self._checkpointer = _Checkpointer(self.path, interval)
            self.conn.execute("PRAGMA wal_autocheckpoint=0")

    def __enter__(self) -> "KVStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reads -------------------------------------------------------------

    def applied(self) -> tuple[int, int]:
        """(applied_lsn, applied_tli), read from the database."""
        try:
            row = self.conn.execute("SELECT applied_lsn, applied_tli FROM meta WHERE id = 1").fetchone()
        except sqlite3.OperationalError:
            return (0, 0)   # read-only opener before the schema exists
        return (row[0], row[1]) if row else (0, 0)

    def applied_lsn(self) -> int:
        return self.applied()[0]

    def applied_tli(self) -> int:
        return self.applied()[1]

    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def lookup(self, key: str) -> tuple[bool, str | None]:
        """(found, value): tells a missing key from a NULL value."""
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return (True, row[0]) if row else (False, None)

    def exists(self, key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone() is not None

    def items(self) -> list[tuple[str, str | None]]:
        """All rows sorted by key (one statement, hence one consistent snapshot)."""
        return self.conn.execute("SELECT key, value FROM kv ORDER BY key").fetchall()

    def keys(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT key FROM kv ORDER BY key")]

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM kv").fetchone()[0]

    def snapshot(self) -> tuple[list[tuple[str, str | None]], int, int]:
        """(rows, applied_lsn, applied_tli) from one read transaction."""
        c = self.conn
        c.execute("BEGIN")
        try:
            rows = c.execute("SELECT key, value FROM kv ORDER BY key").fetchall()
            lsn, tli = self.applied()
        finally:
            c.execute("COMMIT")
        return rows, lsn, tli

    # ---- writes ------------------------------------------------------------

    def _apply_changes(self, changes: Iterable[Change]) -> None:
        # Runs of the same operation go to SQLite together; the (op, key, value)
        # triples are bound as they are (?2, ?3), so a run of puts costs no Python
        # work per row.
        c = self.conn
        for op, run in groupby(changes, key=_OP):
            if op == "put":
                self._put_run(list(run))
            elif op == "delete":
                c.executemany(_DELETE, [(key,) for _op, key, _value in run])
            elif op == "role":
                for _op, name, attrs in run:
                    _roles.apply_role_change(c, name, attrs)
            else:
                raise ValueError(f"unknown kv change {op!r}")

    def _put_run(self, run: Sequence[Change]) -> None:
        """Upsert a run of puts, in order.

        A long run goes as multi-row INSERTs (``_PUT_CHUNKS``): one call into SQLite
        per 256 rows instead of one per row, a third less time for replay's batches
        (160,000 rows of bench.catchup: 0.22 -> 0.15 s).  A short run (a commit of
        a few rows) goes row by row, as it always did.
        """
        c = self.conn
        i, n = 0, len(run)
        for size in _PUT_CHUNKS:
            if n - i >= size:
                sql = _multi_upsert(size)
                while n - i >= size:
                    c.execute(sql, tuple(chain.from_iterable(run[i:i + size])))
                    i += size
        if i < n:
            c.executemany(_UPSERT, run[i:])

    def apply(self, changes: list[Change], commit_end_lsn: int, tli: int) -> bool:
        """Apply one committed transaction; False (nothing done) if already applied."""
        return self.apply_many([(changes, commit_end_lsn)], tli) > 0

    def apply_many(self, batch: list[tuple[list[Change], int]], tli: int | None = None,
                   must_apply: bool = False) -> int:
        """Apply committed transactions in order, in one SQLite transaction.

        ``batch`` is a list of (changes, commit_end_lsn), in commit order.
        Entries whose end LSN is <= the stored applied_lsn are skipped (replay
        after a crash), unless ``must_apply``: then nothing is applied and
        ValueError is raised (a primary's new commits can never be behind its
        store; acknowledging such a commit would lose it).
        Returns how many were applied.  ``tli`` defaults to the stored one.
        """
        if not batch:
            return 0
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            applied_lsn, applied_tli = self.applied()
            done = 0
            last = applied_lsn
            todo: list[Change] = []
            for changes, end_lsn in batch:
                if end_lsn <= last:
                    if must_apply:
                        raise ValueError(f"commit ending at {format_lsn(end_lsn)} is not beyond the store's "
                                         f"position {format_lsn(last)}")
                    continue
                todo.extend(changes)
                last = end_lsn
                done += 1
            # One statement stream for the whole batch: the same effect as the
            # transactions one after another, with far fewer calls into SQLite.
            self._apply_changes(todo)
            if done:
                c.execute("UPDATE meta SET applied_lsn = ?, applied_tli = ? WHERE id = 1",
                          (last, applied_tli if tli is None else tli))
            c.execute("COMMIT")
            if self._checkpointer is not None and not self._checkpointer.kick():
                # The thread failed: checkpoint on commit again, as SQLite does by default.
                self._checkpointer.stop()
                self._checkpointer = None
                c.execute("PRAGMA wal_autocheckpoint=1000")
        except BaseException:
            try:
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        return done

    def set_applied(self, lsn: int, tli: int) -> None:
        """Move applied_lsn without changes (e.g. a base backup's starting point)."""
        self.conn.execute("UPDATE meta SET applied_lsn = ?, applied_tli = ? WHERE id = 1", (lsn, tli))

    def sync(self) -> None:
        """Make everything applied so far durable (checkpoints call this)."""
        # With synchronous=NORMAL in WAL mode SQLite fsyncs the -wal file before a
        # checkpoint and the database file after it, so a FULL checkpoint is durable.
        # Never open and close the database or -wal file ourselves: closing any
        # descriptor of a file drops all of this process's POSIX locks on it, and
        # the next connection to close elsewhere would then take itself for the
        # last one, checkpoint and delete the -wal file under our open connection
        # (whose later commits would then be invisible and lost).
        self.conn.execute("PRAGMA wal_checkpoint(FULL)")
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))


class _Checkpointer:
    """A thread with its own connection that runs PASSIVE checkpoints, at most every `interval` s.

    PASSIVE never blocks the writer or readers; what it cannot copy yet (pages
    a reader still needs) is copied by a later one.  ``KVStore.sync`` still
    runs a FULL checkpoint on the writer's connection.  A second connection of
    the same process is safe where our own descriptors were not (see sync):
    SQLite shares one set of POSIX locks between the connections of a process.
    """

    def __init__(self, path: str, interval: float) -> None:
        self.interval = interval
        self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name="sqlite-checkpointer", daemon=True)
        self.thread.start()

    def kick(self) -> bool:
        """Ask for a checkpoint; False if the thread has failed (the caller takes over)."""
        if self.error is not None:
            return False
        self.wake.set()
        return True

    def run(self) -> None:
        try:
            while True:
                self.wake.wait()
                if self.stopped.is_set():
                    return
                self.wake.clear()
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                # Pace: the commits in between are copied by the next one.
                if self.stopped.wait(self.interval):
                    return
        except BaseException as e:  # noqa: BLE001 - the writer's FULL checkpoints go on without us
            self.error = e

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        self.thread.join()
        try:
            self.conn.close()
        except sqlite3.Error:
            pass


def dump(datadir: str) -> tuple[list[tuple[str, str | None]], int]:
    """``walswitch dump``: (sorted rows, applied_lsn) from one consistent snapshot."""
    path = kv_path(datadir)
    if not os.path.exists(path):
        return [], 0
    store = KVStore(path, readonly=True)
    try:
        rows, lsn, _tli = store.snapshot()
    finally:
        store.close()
    return rows, lsn
