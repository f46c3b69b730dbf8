"""Issue 2, item 5: a primary killed under load keeps every acknowledged commit and nothing else.

* ``kill -9`` of the postmaster and every child, three times in a row, while
  four psycopg2 writers and ``pgbench -c 4 -j 2`` insert: after each restart
  every transaction a client saw committed is there, nothing that was never
  committed is, and a two-row transaction that was in flight is all there or
  not at all;
* ``walswitch stop -m immediate`` then start: crash recovery ("automatic
  recovery in progress") with the same guarantees;
* shared memory: after each restart /dev/shm holds exactly the objects the
  new postmaster created (same names, new inodes, the segment's header names
  the new postmaster), and nothing after a clean stop.

Uses the shared ``nodes`` fixture (tests/conftest.py): servers are stopped
and leak-checked at teardown.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest

from shmem import layout
from shmem.names import DEV_SHM, segment_name
from tests.cluster import PGBIN, Node, shm_objects, wait_for

PGBENCH_SCRIPT = (
    "\\set n random(1, 1000000000)\n"
    "INSERT INTO kv VALUES ('pgbench-:client_id-:n', 'v');\n"
)


@dataclass
class Ledger:
    """What the clients saw, per key group; filled by the writer threads."""
    committed: set[tuple[str, ...]] = field(default_factory=set)    # COMMIT (or autocommit) returned
    in_flight: set[tuple[str, ...]] = field(default_factory=set)    # COMMIT sent, no answer
    uncommitted: set[tuple[str, ...]] = field(default_factory=set)  # never committed: rolled back, or died before COMMIT
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, which: set, group: tuple[str, ...]) -> None:
        with self.lock:
            which.add(group)

    def count(self) -> int:
        with self.lock:
            return len(self.committed)


def writer(node: Node, ledger: Ledger, tag: str, stop: threading.Event) -> None:
    """Autocommit single inserts, two-row transactions and rollbacks, until the server dies."""
    rnd = random.Random(tag)
    try:
        conn = node.connect()
    except psycopg2.Error:
        return
    cur = conn.cursor()
    j = 0
    try:
        while not stop.is_set():
            j += 1
            kind = rnd.random()
            if kind < 0.4:
                group = (f"{tag}-s{j}",)
                ledger.add(ledger.in_flight, group)
                cur.execute("INSERT INTO kv VALUES (%s, 'single')", group)
                ledger.add(ledger.committed, group)
                continue
            a, b = f"{tag}-t{j}a", f"{tag}-t{j}b"
            group = (a, b)
            # Uncommitted until COMMIT is sent; in flight until it returns.
            ledger.add(ledger.uncommitted, group)
            cur.execute("BEGIN")
            cur.execute("INSERT INTO kv VALUES (%s, 'pair')", (a,))
            cur.execute("INSERT INTO kv VALUES (%s, 'pair')", (b,))
            if kind < 0.5:
                cur.execute("ROLLBACK")
                continue
            with ledger.lock:
                ledger.uncommitted.discard(group)
                ledger.in_flight.add(group)
            cur.execute("COMMIT")
            ledger.add(ledger.committed, group)
    except psycopg2.Error:
        pass                                 # the server was killed under us
    finally:
        conn.close()


def check_ledger(node: Node, ledger: Ledger) -> None:
    have = {k for (k,) in node.sql("SELECT key FROM kv")}
    lost = sorted(k for g in ledger.committed for k in g if k not in have)
    assert not lost, f"acknowledged commits lost: {lost[:10]} ({len(lost)})"
    ghosts = sorted(k for g in ledger.uncommitted for k in g if k in have)
    assert not ghosts, f"rows of never-committed transactions visible: {ghosts[:10]}"
    half = sorted(g for g in ledger.in_flight - ledger.committed if len({k in have for k in g}) != 1)
    assert not half, f"half-applied transactions: {half[:10]}"


def shm_inodes(node: Node) -> dict[str, int]:
    return {name: os.stat(os.path.join(DEV_SHM, name)).st_ino for name in shm_objects(node.datadir)}


def segment_owner(node: Node) -> int:
    """The postmaster pid written in the shared-memory segment's header."""
    with open(os.path.join(DEV_SHM, segment_name(node.datadir).lstrip("/")), "rb") as f:
        magic, _version, _size, pid, _t = layout.HEADER.unpack(f.read(layout.HEADER.size))
    assert magic == layout.MAGIC
    return pid


def check_fresh_shm(node: Node, before: dict[str, int]) -> dict[str, int]:
    """After a restart: the same set of names, every one of them recreated by the new postmaster."""
    after = shm_inodes(node)
    assert set(after) == set(before), f"/dev/shm objects differ: {sorted(set(after) ^ set(before))}"
    stale = sorted(n for n in after if after[n] == before[n])
    assert not stale, f"objects of the killed server survived the restart: {stale}"
    assert segment_owner(node) == node.pid
    return after


def start_pgbench(node: Node) -> subprocess.Popen:
    script = Path(node.datadir).parent / "crash-bench.sql"
    script.write_text(PGBENCH_SCRIPT)
    return subprocess.Popen([str(PGBIN / "pgbench"), "-n", "-M", "simple", "-f", str(script),
                             "-c", "4", "-j", "2", "-T", "20",
                             "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres", "postgres"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_log_since(node: Node, offset: int, needle: str, timeout: float = 10.0) -> None:
    wait_for(lambda: needle in node.log_text()[offset:], timeout, f"log line {needle!r}")


def count_rows(node: Node) -> int:
    return node.sql("SELECT count(*) FROM kv")[0][0]


@pytest.mark.timeout(120)
def test_kill9_everything_under_load_three_times(nodes):
    n = nodes.primary()
    ledger = Ledger()
    inodes = shm_inodes(n)
    assert inodes and segment_owner(n) == n.pid
    for cycle in range(3):
        stop = threading.Event()
        base_commits, base_rows = ledger.count(), count_rows(n)
        bench = start_pgbench(n)
        threads = [threading.Thread(target=writer, args=(n, ledger, f"c{cycle}w{i}", stop)) for i in range(4)]
        for t in threads:
            t.start()
        # Kill in the middle of the load: our writers committed some, pgbench too.
        wait_for(lambda: ledger.count() >= base_commits + 150, 30, "the writers to commit")
        wait_for(lambda: count_rows(n) >= base_rows + 150 + 2 * (ledger.count() - base_commits), 30,
                 "pgbench to commit")
        old_pid = n.pid
        n.kill9_all()
        stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        bench.communicate(timeout=30)
        # A child forked just before the kill exits on its own (parent-death signal, death pipe).
        wait_for(lambda: not n.processes(), 5, "every process of the killed server to be gone")
        assert shm_objects(n.datadir), "the killed server's objects are expected until the next start"
        log_size = len(n.log_text())
        n.start()
        assert n.pid != old_pid
        wait_log_since(n, log_size, "database system was not properly shut down; automatic recovery in progress")
        inodes = check_fresh_shm(n, inodes)
        check_ledger(n, ledger)
    # New writes after the last recovery work, and a clean stop leaves nothing behind.
    n.sql("INSERT INTO kv VALUES ('after-crashes', 'ok')")
    n.stop("fast")
    assert shm_objects(n.datadir) == []
    assert not n.processes()
    log_size = len(n.log_text())
    n.start()
    assert n.sql("SELECT value FROM kv WHERE key = 'after-crashes'") == [("ok",)]
    check_ledger(n, ledger)
    wait_log_since(n, log_size, "redo is not required")


@pytest.mark.timeout(60)
def test_immediate_stop_then_crash_recovery(nodes):
    n = nodes.primary()
    ledger = Ledger()
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(n, ledger, f"w{i}", stop)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: ledger.count() >= 200, 30, "the writers to commit")
    n.stop("immediate")
    stop.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    # An immediate stop is a crash for the data, not for the machine: the postmaster removed its objects.
    assert shm_objects(n.datadir) == []
    assert not n.processes()
    log_size = len(n.log_text())
    n.start()
    # Children's log lines reach the file through the postmaster's log queue: wait for them.
    for needle in ("database system was interrupted; last known up at",
                   "database system was not properly shut down; automatic recovery in progress",
                   "redo done at", "end-of-recovery checkpoint"):
        wait_log_since(n, log_size, needle)
    check_ledger(n, ledger)
    n.sql("INSERT INTO kv VALUES ('after', 'immediate')")
    n.stop("fast")
    assert shm_objects(n.datadir) == []
    log_size = len(n.log_text())
    n.start()
    wait_log_since(n, log_size, "redo is not required")
    assert n.sql("SELECT value FROM kv WHERE key = 'after'") == [("immediate",)]
    check_ledger(n, ledger)


# ---------------------------------------------------------------- the leak check checks
FAKE_SERVER = """
import os, sys, time, setproctitle
os.makedirs(sys.argv[1], exist_ok=True)
os.chdir(sys.argv[1])                    # as the real postmaster does
setproctitle.setproctitle("walswitch: postmaster -D " + sys.argv[1])
pid = os.fork()
if pid == 0:
    setproctitle.setproctitle("walswitch: backend")
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
if sys.argv[2] == "orphan":
    os._exit(0)                          # the child outlives its postmaster
time.sleep(60)
"""


def fake_server(datadir: str, how: str) -> tuple[subprocess.Popen, int]:
    """Processes titled like a server of ``datadir``: a postmaster and its backend."""
    import sys
    p = subprocess.Popen([sys.executable, "-c", FAKE_SERVER, datadir, how], stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


@pytest.mark.timeout(30)
def test_leak_check_reports_leftover_shared_memory(tmp_path):
    import posix_ipc

    from shmem.names import semaphore_name
    node = Node(tmp_path, "fake")
    posix_ipc.SharedMemory(segment_name(node.datadir), posix_ipc.O_CREX, mode=0o600, size=4096).close_fd()
    posix_ipc.Semaphore(semaphore_name(node.datadir, "lock.pm"), posix_ipc.O_CREX, mode=0o600,
                        initial_value=1).close()
    left = shm_objects(node.datadir)
    assert len(left) == 2
    problems = node.cleanup()
    assert len(problems) == 1 and "fake: shared memory/semaphores left" in problems[0], problems
    assert all(o in problems[0] for o in left)
    assert shm_objects(node.datadir) == []       # and it removed them
    assert node.cleanup() == []                  # nothing left: nothing reported


@pytest.mark.timeout(30)
def test_leak_check_reports_leftover_processes(tmp_path):
    node = Node(tmp_path, "fake")
    proc, child = fake_server(node.datadir, "stay")
    try:
        wait_for(lambda: len(node.processes()) == 2, 10, "the fake server's processes")
        problems = node.cleanup()
        assert len(problems) == 1 and "fake: processes left" in problems[0], problems
        assert f"walswitch: postmaster -D {node.datadir}" in problems[0] and "walswitch: backend" in problems[0]
        proc.wait(10)                            # cleanup killed both
        wait_for(lambda: not os.path.exists(f"/proc/{child}"), 10, "the fake backend to be gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()


@pytest.mark.timeout(30)
def test_leak_check_reports_orphaned_child(tmp_path):
    node = Node(tmp_path, "fake")
    proc, child = fake_server(node.datadir, "orphan")
    try:
        proc.wait(10)
        assert os.path.exists(f"/proc/{child}")
        problems = node.cleanup()
        assert any("processes left" in p for p in problems), problems
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
