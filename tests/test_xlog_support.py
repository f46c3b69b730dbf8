"""Shared helpers for the xlog tests (no tests here): PG15 binaries, pg_waldump output, WAL dirs.

PostgreSQL's binaries refuse to run as root, so they run as `postgres`
through runuser, on directories under /tmp that postgres can read.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

PG_BIN = "/usr/lib/postgresql/15/bin"
PG_WALDUMP = os.path.join(PG_BIN, "pg_waldump")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1024 * 1024

_LINE = re.compile(r"^rmgr: (\S+)\s+len \(rec/tot\):\s+(\d+)/\s*(\d+), tx:\s+(\d+), "
                   r"lsn: ([0-9A-F]+)/([0-9A-F]+), prev ([0-9A-F]+)/([0-9A-F]+), desc: (.*)$")


@dataclass(frozen=True)
class DumpLine:
    rmgr: str
    rec_len: int
    tot_len: int
    xid: int
    lsn: int
    prev: int
    desc: str


def parse_dump(text: str) -> list[DumpLine]:
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(DumpLine(m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)),
                                int(m.group(5), 16) << 32 | int(m.group(6), 16),
                                int(m.group(7), 16) << 32 | int(m.group(8), 16), m.group(9)))
    return out


def can_run_pg() -> str | None:
    """None if PG15's binaries can run here as postgres, else the reason they cannot."""
    if not os.path.exists(PG_WALDUMP):
        return f"{PG_WALDUMP} is missing (PostgreSQL 15 not installed)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user"
    if os.geteuid() != 0:
        return "the tests must run as root to run PostgreSQL binaries as postgres"
    return None


def as_postgres(args: list[str], timeout: float = 60, cwd: str = "/tmp",
                check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, check=check)


def shared_tmpdir(prefix: str) -> str:
    """A directory under /tmp that the postgres user can read (and own, for clusters)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return d


def make_readable(path: str) -> None:
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def run_pg_waldump(wal_dir: str, first: str, last: str | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess:
    args = [PG_WALDUMP, "-p", wal_dir, first] + ([last] if last else [])
    return as_postgres(args, timeout=timeout)


def run_our_waldump(paths: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "xlog.waldump", *paths], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env)
