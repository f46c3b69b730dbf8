"""The fixed layout of a server's shared memory segment.

One POSIX segment per running server, mode 0600, made of fixed regions laid
out with ``struct`` at fixed offsets.  The first bytes are a header (magic,
layout version, size) so that an attaching process (``walswitch status``)
knows it reads the layout it expects.

Field names say who writes them; the region's mutex (a semaphore, see
sync.py) guards every multi-field read or write.  A single aligned 8-byte
field may be read without the lock for a hint (for example a walsender
peeking at the flush position before it sleeps), never for a decision that
must be consistent with another field.

Regions (mirroring PostgreSQL's):

``pm``        PMSignal: flags children raise to ask the postmaster for
              something (then they SIGUSR1 it).  Written by children, cleared
              by the postmaster.
``xlog``      XLogCtl: system identifier, timeline, insert/write/flush
              positions.  Written by the WAL inserter (backend) or the
              startup process during recovery.
``archiver``  archiver progress: last archived segment, failures.
``walsnd``    one slot per walsender (``max_wal_senders``): pid, state, sent
              position, and what the standby reported.  A slot is owned by
              the walsender whose pid it holds.
``recovery``  XLogRecoveryCtl: recovery state, WAL source, replay position,
              last restored segment, promotion.  Written by the startup
              process.
``walrcv``    WalRcvData: walreceiver state and positions.  Written by the
              walreceiver, except the start request fields (startup).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = b"WSWSHM\x00\x01"
LAYOUT_VERSION = 1

HEADER = struct.Struct("<8sIIqq")  # magic, version, size, postmaster pid, start time (us)


@dataclass(frozen=True)
class RegionLayout:
    name: str
    fields: tuple[tuple[str, str], ...]

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct("<" + "".join(f for _, f in self.fields))

    def offsets(self) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        pos = 0
        for name, fmt in self.fields:
            out[name] = (pos, "<" + fmt)
            pos += struct.calcsize("<" + fmt)
        return out


PM = RegionLayout("pm", (
    ("start_walreceiver", "B"),     # startup sets, postmaster clears
    ("recovery_started", "B"),      # startup sets
    ("hot_standby_ready", "B"),     # startup sets once consistent
    ("promote_requested", "B"),     # promote CLI / backend sets, postmaster forwards
    ("stop_walreceiver", "B"),      # startup sets, postmaster clears
    ("reload_requested", "B"),
    ("rotate_logfile", "B"),        # backend sets (pg_rotate_logfile), postmaster clears
    ("pad", "1x"),
    ("checkpoint_requested", "Q"),  # backend bumps; postmaster asks the checkpointer
))

XLOG = RegionLayout("xlog", (
    ("system_identifier", "Q"),
    ("wal_segsize", "I"),
    ("timeline", "I"),              # inserter's timeline
    ("insert_lsn", "Q"),            # inserter writes (start of the next record)
    ("last_record_lsn", "Q"),       # inserter writes (xl_prev of the next record)
    ("write_lsn", "Q"),             # inserter writes
    ("flush_lsn", "Q"),             # inserter writes after fsync; walsenders read
    ("redo_lsn", "Q"),              # last checkpoint's redo (primary)
    ("checkpoint_lsn", "Q"),
    ("oldest_kept_segno", "Q"),     # segments below were removed (walsender error)
    ("in_recovery", "B"),
    ("accepting_writes", "B"),
    ("pad", "6x"),
    ("last_switch_mono_us", "q"),   # for archive_timeout
))

ARCHIVER = RegionLayout("archiver", (
    ("pid", "i"),
    ("failed_count", "I"),
    ("archived_count", "Q"),
    ("last_archived_wal", "40s"),
    ("last_archived_time", "q"),
    ("last_failed_wal", "40s"),
    ("last_failed_time", "q"),
))

WALSND = RegionLayout("walsnd", (
    ("pid", "i"),
    ("state", "I"),                 # WalSndState
    ("sent_lsn", "Q"),
    ("write_lsn", "Q"),             # from the standby's status messages
    ("flush_lsn", "Q"),
    ("replay_lsn", "Q"),
    ("write_lag_us", "q"),          # -1 = NULL
    ("flush_lag_us", "q"),
    ("replay_lag_us", "q"),
    ("reply_time_us", "q"),         # Unix epoch microseconds
    ("backend_start_us", "q"),
    ("client_port", "i"),
    ("timeline", "I"),
    ("application_name", "64s"),
    ("client_addr", "48s"),
))

RECOVERY = RegionLayout("recovery", (
    ("state", "I"),                 # startup writes: recovery state machine
    ("wal_source", "I"),            # startup writes: 0 none, 1 archive, 2 pg_wal, 3 stream
    ("timeline", "I"),              # timeline being replayed
    ("coordination", "I"),
    ("replay_lsn", "Q"),            # end of last replayed record
    ("replay_tli", "I"),
    ("startup_pid", "i"),
    ("last_replay_time_us", "q"),
    ("last_restored_segment", "40s"),
    ("promote_requested", "B"),
    ("consistent", "B"),
    ("pad", "6x"),
    ("min_recovery_point", "Q"),
))

WALRCV = RegionLayout("walrcv", (
    ("state", "I"),                 # WalRcvState; walreceiver writes (startup requests)
    ("pid", "i"),
    ("receive_start", "Q"),         # startup writes when requesting a start
    ("receive_start_tli", "I"),
    ("received_tli", "I"),
    ("flushed_lsn", "Q"),           # walreceiver writes after fsync
    ("written_lsn", "Q"),
    ("latest_chunk_start", "Q"),
    ("last_msg_send_us", "q"),
    ("last_msg_recv_us", "q"),
    ("latest_end_lsn", "Q"),
    ("latest_end_time_us", "q"),
    ("sender_port", "i"),
    ("pad", "4x"),
    ("sender_host", "64s"),
    ("conninfo", "512s"),
    ("restore_ahead_lsn", "Q"),     # walreceiver_restores: restored up to
    ("fetch_source", "I"),          # walreceiver: where it gets WAL now (WalSource numbers)
    ("pad2", "4x"),
    ("force_reply", "B"),           # startup sets when it replayed all it had (WalRcvForceReply)
    ("pad3", "7x"),
    ("writing_segno", "q"),         # walreceiver, under the lock, BEFORE it creates or opens a
                                    # segment to write it; -1 when it writes none (concurrent guard)
    ("startup_wait_lsn", "Q"),      # startup writes (walreceiver_restores): the position its reader waits
                                    # for, then sets the walreceiver's latch; 0 = never published. The
                                    # walreceiver restores on demand from there (prefetch N: N more).
    ("restore_fatal", "I"),         # walreceiver writes 1 (then exits 1) after a restore_command failure
                                    # PostgreSQL treats as fatal; the startup then ends recovery (FATAL).
                                    # Sticky: no walreceiver clears it (shared memory is recreated anyway)
    ("pad4", "4x"),
))

SINGLE_REGIONS = (PM, XLOG, ARCHIVER, RECOVERY, WALRCV)

# Latches: one per process role (walsenders have one per slot).
LATCH_ROLES = ("postmaster", "startup", "walreceiver", "backend", "archiver", "checkpointer")
