"""The state enums stored in shared memory (shmem/layout.py), read by every process.

``RecoveryState`` and ``WalSource`` are the startup process's WAL-source state
machine (its transition table and the one function that performs a transition
live in startup/standby.py), stored in the recovery region; ``WalRcvState`` is
PostgreSQL's WalRcvState (transition table in walreceiver/walreceiver.py),
stored in the walreceiver region.
"""
from __future__ import annotations

from enum import IntEnum

class RecoveryState(IntEnum):
    NOT_STARTED = 0
    CRASH_RECOVERY = 1        # primary: replaying pg_wal after an unclean stop
    ARCHIVE_RECOVERY = 2      # standby: initial archive recovery (restore_command, segment by segment)
    RETRY_ARCHIVE = 3         # standby: walreceiver started; keep trying the archive
    STREAMING = 4             # standby: replaying what the walreceiver flushed
    WAIT_RETRY = 5            # standby: waiting out wal_retrieve_retry_interval
    PROMOTING = 6             # finishing recovery, choosing a new timeline
    DONE = 7                  # recovery finished; the server runs as a primary


class WalSource(IntEnum):
    NONE = 0
    ARCHIVE = 1
    PG_WAL = 2
    STREAM = 3


class WalRcvState(IntEnum):
    STOPPED = 0
    STARTING = 1
    STREAMING = 2
    WAITING = 3
    RESTARTING = 4
    STOPPING = 5


def walrcv_state_name(v: int) -> str:
    try:
        return WalRcvState(v).name.lower()
    except ValueError:
        return str(v)
