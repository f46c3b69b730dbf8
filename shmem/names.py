"""Names of a server's POSIX shared memory and semaphores, and stale-object cleanup.

Every object of one server derives its name from the real path of the data
directory, so that a new postmaster finds and removes whatever a killed one
left behind (PostgreSQL does the same with the key it stores in
postmaster.pid).  On Linux the objects appear in /dev/shm: the segment as
``walswitch.<hash>`` and each semaphore as ``sem.walswitch.<hash>.<name>``.
"""
from __future__ import annotations

import hashlib
import os

import posix_ipc

PREFIX = "walswitch."
DEV_SHM = "/dev/shm"


def server_key(datadir: str) -> str:
    """Short stable key of a data directory."""
    real = os.path.realpath(datadir)
    return hashlib.sha1(real.encode()).hexdigest()[:12]


def segment_name(datadir: str) -> str:
    return f"/{PREFIX}{server_key(datadir)}"


def semaphore_name(datadir: str, what: str) -> str:
    return f"/{PREFIX}{server_key(datadir)}.{what}"


def list_objects(datadir: str | None = None) -> list[str]:
    """Entries of /dev/shm that belong to walswitch (to one server if datadir given)."""
    want = PREFIX + (server_key(datadir) if datadir else "")
    try:
        entries = os.listdir(DEV_SHM)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if e.startswith(want) or e.startswith("sem." + want))


def remove_objects(datadir: str) -> int:
    """Unlink every shared-memory segment and semaphore of this data directory.

    Returns how many were removed.  Safe to call when none exist.
    """
    removed = 0
    for entry in list_objects(datadir):
        try:
            if entry.startswith("sem."):
                posix_ipc.unlink_semaphore("/" + entry[len("sem."):])
            else:
                posix_ipc.unlink_shared_memory("/" + entry)
            removed += 1
        except posix_ipc.ExistentialError:
            pass
    return removed
