"""Shared pieces of the benchmarks: temporary servers (walswitch and PostgreSQL 15), timing, medians.

Benchmarks measure; they never assert.  Each figure is the median of several
runs, and each walswitch figure is quoted as a ratio against PostgreSQL 15
measured in the same run on the same machine.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
PGBIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def ws(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "walswitch.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"walswitch {' '.join(args)}: {p.stderr.strip()}")
    return p


@contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Server:
    kind: str          # "walswitch" or "postgresql"
    datadir: Path
    port: int

    def dsn_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "postgres"]


@contextmanager
def walswitch_primary(base: Path, name: str = "ws", conf: dict | None = None,
                      segsize_mb: int = 16) -> Iterator[Server]:
    datadir = base / name
    port = free_port()
    ws("init", "-D", str(datadir), "--wal-segsize", str(segsize_mb), "-p", str(port))
    if conf:
        with open(datadir / "walswitch.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = '{v}'\n")
    ws("start", "-D", str(datadir), "--detach")
    try:
        yield Server("walswitch", datadir, port)
    finally:
        ws("stop", "-D", str(datadir), "-m", "immediate", check=False)


@contextmanager
def pg_primary(base: Path, name: str = "pg", conf: dict | None = None, segsize_mb: int = 16) -> Iterator[Server]:
    datadir = base / name
    port = free_port()
    r = as_postgres([str(PGBIN / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                     f"--wal-segsize={segsize_mb}", "-N"])
    if r.returncode:
        raise RuntimeError(f"initdb failed: {r.stderr}")
    lines = [f"port = {port}", "listen_addresses = '127.0.0.1'", f"unix_socket_directories = '{base}'",
             "fsync = on", "synchronous_commit = on"]
    for k, v in (conf or {}).items():
        lines.append(f"{k} = '{v}'")
    with open(datadir / "postgresql.auto.conf", "a") as f:
        f.write("\n".join(lines) + "\n")
    r = as_postgres([str(PGBIN / "pg_ctl"), "-D", str(datadir), "-l", str(datadir / "server.log"), "-w", "start"])
    if r.returncode:
        raise RuntimeError(f"pg_ctl start failed: {r.stderr}{r.stdout}")
    try:
        psql(Server("postgresql", datadir, port), "CREATE TABLE IF NOT EXISTS kv (key text PRIMARY KEY, value text)")
        yield Server("postgresql", datadir, port)
    finally:
        as_postgres([str(PGBIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"])


def psql(server: Server, sql: str) -> str:
    r = subprocess.run([str(PGBIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", *server.dsn_args(), "-c", sql],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"psql: {r.stderr}")
    return r.stdout.strip()


def now() -> float:
    return time.monotonic()
