"""``DIR/postmaster.pid``: the data directory lock, as PostgreSQL's.

Lines: pid, data directory, start time (epoch seconds), port, socket
directory (empty: we listen on TCP only), listen address, shared memory key,
status (``starting``, ``ready``, ``standby``, ``stopping``).  ``walswitch
start --detach`` and ``walswitch stop`` read the status line, as pg_ctl does.

A lock file whose pid is not alive (or is alive but not a walswitch
postmaster) is stale and is replaced, so that a ``kill -9`` of the
postmaster never prevents the next start.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

PIDFILE = "postmaster.pid"


class LockFileError(RuntimeError):
    pass


@dataclass
class PidInfo:
    pid: int
    datadir: str
    start_time: int
    port: int
    listen: str
    shmem_key: str
    status: str


def path(datadir: str) -> str:
    return os.path.join(datadir, PIDFILE)


def read(datadir: str) -> PidInfo | None:
    try:
        with open(path(datadir), encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return None
    try:
        return PidInfo(int(lines[0]), lines[1], int(lines[2]), int(lines[3]), lines[5], lines[6],
                       lines[7].strip() if len(lines) > 7 else "")
    except (IndexError, ValueError):
        return None


def is_running(info: PidInfo | None) -> bool:
    """Is the pid of a lock file a live walswitch postmaster?"""
    if info is None or info.pid <= 0:
        return False
    try:
        p = psutil.Process(info.pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return "walswitch" in " ".join(p.cmdline()) or "walswitch" in p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def create(datadir: str, port: int, listen: str, shmem_key: str) -> None:
    """Take the lock or raise LockFileError with PostgreSQL's wording."""
    p = path(datadir)
    for _ in range(3):
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            other = read(datadir)
            if other is not None and other.pid != os.getpid() and is_running(other):
                raise LockFileError(f'lock file "{PIDFILE}" already exists: '
                                    f'is another postmaster (PID {other.pid}) running in data directory "{datadir}"?')
            try:
                os.unlink(p)     # stale
            except FileNotFoundError:
                pass
            continue
        content = f"{os.getpid()}\n{os.path.realpath(datadir)}\n{int(time.time())}\n{port}\n\n{listen}\n{shmem_key}\nstarting\n"
        os.write(fd, content.encode())
        os.fsync(fd)
        os.close(fd)
        return
    raise LockFileError(f'could not create lock file "{p}"')


def set_status(datadir: str, status: str) -> None:
    p = path(datadir)
    try:
        with open(p, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return
    while len(lines) < 8:
        lines.append("")
    lines[7] = status
    tmp = p + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:8]) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def remove(datadir: str) -> None:
    info = read(datadir)
    if info is None or info.pid == os.getpid():
        try:
            os.unlink(path(datadir))
        except FileNotFoundError:
            pass
