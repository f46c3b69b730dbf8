"""``make demo``: a primary with an archive, under load, shown live; ends by itself.

Everything lives in a temporary directory that is removed at the end:
a walswitch primary (1 MB WAL segments, archive_mode on, ``cp`` as
archive_command), four writer threads, and — when PostgreSQL 15's client tools
are installed — ``pg_receivewal`` streaming from it, so that a real
PostgreSQL client shows up in ``pg_stat_replication``.  Each second one line
shows the flush LSN, WAL rate, archived segments and connections; the run
ends after ``--seconds`` with a check that the archive holds every completed
segment byte for byte.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psycopg2

from xlog.lsn import format_lsn, is_segment_name, parse_lsn

PGBIN = "/usr/lib/postgresql/15/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ws(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "walswitch.cli", *args], capture_output=True, text=True)


def writer(dsn: str, stop: threading.Event, counts: list[int], idx: int) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    n = 0
    while not stop.is_set():
        cur.execute("INSERT INTO kv VALUES (%s, %s)", (f"w{idx}-{n % 5000}", "x" * 200 + str(n)))
        n += 1
        counts[idx] = n
    conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=30)
    args = ap.parse_args(argv)
    base = tempfile.mkdtemp(prefix="walswitch-demo-")
    datadir, archive = os.path.join(base, "primary"), os.path.join(base, "archive")
    os.makedirs(archive)
    port = free_port()
    receiver = None
    ok = False
    try:
        r = ws("init", "-D", datadir, "--wal-segsize", "1", "-p", str(port))
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        with open(os.path.join(datadir, "walswitch.conf"), "a") as f:
            f.write(f"archive_mode = on\narchive_command = 'cp %p {archive}/%f'\n")
        r = ws("start", "-D", datadir, "--detach")
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        print(f"primary on 127.0.0.1:{port}, data in {datadir}, archive in {archive}")
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        if os.path.exists(os.path.join(PGBIN, "pg_receivewal")):
            recv_dir = os.path.join(base, "receivewal")
            os.makedirs(recv_dir)
            receiver = subprocess.Popen([os.path.join(PGBIN, "pg_receivewal"), "-h", "127.0.0.1", "-p", str(port),
                                         "-U", "postgres", "-D", recv_dir, "--no-loop"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        counts = [0] * 4
        threads = [threading.Thread(target=writer, args=(dsn, stop, counts, i)) for i in range(4)]
        for t in threads:
            t.start()
        mon = psycopg2.connect(dsn)
        mon.autocommit = True
        cur = mon.cursor()
        print(f"{'t':>4} {'flush_lsn':>12} {'WAL kB/s':>9} {'commits/s':>9} {'archived':>8} {'walsenders':>10}")
        t0 = time.monotonic()
        last_lsn, last_commits, last_t = None, 0, t0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            cur.execute("SELECT pg_current_wal_lsn()")
            lsn = parse_lsn(cur.fetchone()[0])
            cur.execute("SELECT application_name, state, sent_lsn FROM pg_stat_replication")
            senders = cur.fetchall()
            now = time.monotonic()
            commits = sum(counts)
            rate = 0.0 if last_lsn is None else (lsn - last_lsn) / 1024 / (now - last_t)
            archived = len([f for f in os.listdir(archive) if is_segment_name(f)])
            senders_text = ", ".join(f"{a or '?'}:{s}" for a, s, _ in senders) or "-"
            print(f"{now - t0:4.0f} {format_lsn(lsn):>12} {rate:9.0f} "
                  f"{(commits - last_commits) / (now - last_t):9.0f} {archived:8d} {senders_text:>10}")
            last_lsn, last_commits, last_t = lsn, commits, now
        stop.set()
        for t in threads:
            t.join()
        cur.execute("SELECT pg_switch_wal()")
        mon.close()
        # Wait (bounded) for the archiver to catch up, then compare.
        pg_wal = os.path.join(datadir, "pg_wal")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready = [f for f in os.listdir(os.path.join(pg_wal, "archive_status")) if f.endswith(".ready")]
            if not ready:
                break
            time.sleep(0.1)
        same = differ = 0
        for name in sorted(os.listdir(archive)):
            src = os.path.join(pg_wal, name)
            if os.path.exists(src):
                if filecmp.cmp(src, os.path.join(archive, name), shallow=False):
                    same += 1
                else:
                    differ += 1
        total = sum(counts)
        print(f"\n{total} commits in {args.seconds} s; {len(os.listdir(archive))} segments archived; "
              f"{same} compared byte-identical with pg_wal, {differ} differ")
        ok = differ == 0
    finally:
        if receiver is not None:
            receiver.send_signal(signal.SIGINT)
            try:
                receiver.wait(10)
            except subprocess.TimeoutExpired:
                receiver.kill()
        ws("stop", "-D", datadir, "-m", "fast")
        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
