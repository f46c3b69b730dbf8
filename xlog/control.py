"""Our control file, global/walswitch_control: the durable "where are we" of a data directory.

Owns the ControlFile record (system identifier, cluster state, last
checkpoint/restartpoint and its redo point, timeline, minimum recovery
point, backup-end flag, segment size, next xid), its binary layout (ours,
not pg_control's; fixed size, CRC-32C over everything before the CRC),
and reading/writing it: writes are atomic (temp file, fsync, rename,
fsync directory) so a crash leaves the old or the new file, never a mix.
"""
from __future__ import annotations

import enum
import os
import struct
import time
from dataclasses import dataclass, replace

import google_crc32c

from .durable import write_durably

CONTROL_FILE_NAME = "walswitch_control"
CONTROL_MAGIC = 0x57534354  # "WSCT"
CONTROL_VERSION = 1
# Padded like pg_control (PG_CONTROL_FILE_SIZE is 8192; 512 is its "safe" size),
# so one sector holds the meaningful bytes.
CONTROL_FILE_SIZE = 512

# magic, version, sysid, state, timeline, prev_timeline, min_recovery_point_tli,
# checkpoint_lsn, redo_lsn, min_recovery_point, backup_start_lsn, backup_end_lsn,
# backup_end_required, wal_segsize, next_xid, time
_LAYOUT = struct.Struct("<IIQIIIIQQQQQ?3xIQd")
_CRC = struct.Struct("<I")


class ControlFileError(Exception):
    """Missing or corrupt control file: a one-line message naming the file."""


class DBState(enum.IntEnum):
    """PostgreSQL's DBState, same names and order (pg_control.h)."""

    STARTUP = 0
    SHUTDOWNED = 1
    SHUTDOWNED_IN_RECOVERY = 2
    SHUTDOWNING = 3
    IN_CRASH_RECOVERY = 4
    IN_ARCHIVE_RECOVERY = 5
    IN_PRODUCTION = 6

    def describe(self) -> str:
        """pg_controldata's wording ("in production", "shut down in recovery", ...)."""
        return _STATE_TEXT[self]


_STATE_TEXT = {
    DBState.STARTUP: "starting up",
    DBState.SHUTDOWNED: "shut down",
    DBState.SHUTDOWNED_IN_RECOVERY: "shut down in recovery",
    DBState.SHUTDOWNING: "shutting down",
    DBState.IN_CRASH_RECOVERY: "in crash recovery",
    DBState.IN_ARCHIVE_RECOVERY: "in archive recovery",
    DBState.IN_PRODUCTION: "in production",
}


@dataclass(frozen=True)
class ControlFile:
    system_identifier: int
    state: DBState
    checkpoint_lsn: int
    redo_lsn: int
    timeline: int
    prev_timeline: int
    min_recovery_point: int = 0
    min_recovery_point_tli: int = 0
    backup_end_required: bool = False
    wal_segsize: int = 16 * 1024 * 1024
    next_xid: int = 3
    time: float = 0.0
    backup_start_lsn: int = 0
    backup_end_lsn: int = 0

    def with_changes(self, **changes: object) -> "ControlFile":
        """A copy with some fields changed (and `time` refreshed unless given)."""
        if "time" not in changes:
            changes["time"] = time.time()
        return replace(self, **changes)  # type: ignore[arg-type]

    def pack(self) -> bytes:
        body = _LAYOUT.pack(CONTROL_MAGIC, CONTROL_VERSION, self.system_identifier, int(self.state),
                            self.timeline, self.prev_timeline, self.min_recovery_point_tli,
                            self.checkpoint_lsn, self.redo_lsn, self.min_recovery_point,
                            self.backup_start_lsn, self.backup_end_lsn, self.backup_end_required,
                            self.wal_segsize, self.next_xid, float(self.time))
        body += _CRC.pack(google_crc32c.value(body))
        return body.ljust(CONTROL_FILE_SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes, path: str = CONTROL_FILE_NAME) -> "ControlFile":
        n = _LAYOUT.size
        if len(data) < n + _CRC.size:
            raise ControlFileError(f'control file "{path}" is too short ({len(data)} bytes)')
        (magic, version, sysid, state, tli, prev_tli, mrp_tli, ckpt, redo, mrp, bstart, bend, bereq,
         segsize, next_xid, t) = _LAYOUT.unpack_from(data, 0)
        if magic != CONTROL_MAGIC:
            raise ControlFileError(f'control file "{path}" has wrong magic number {magic:08X}')
        if version != CONTROL_VERSION:
            raise ControlFileError(f'control file "{path}" has version {version}, expected {CONTROL_VERSION}')
        crc = _CRC.unpack_from(data, n)[0]
        if crc != google_crc32c.value(data[:n]):
            raise ControlFileError(f'incorrect checksum in control file "{path}"')
        try:
            st = DBState(state)
        except ValueError:
            raise ControlFileError(f'control file "{path}" has invalid state {state}') from None
        return cls(sysid, st, ckpt, redo, tli, prev_tli, mrp, mrp_tli, bereq, segsize, next_xid, t,
                   bstart, bend)


def control_path(datadir: str) -> str:
    return os.path.join(datadir, "global", CONTROL_FILE_NAME)


def read_control(datadir: str) -> ControlFile:
    path = control_path(datadir)
    try:
        with open(path, "rb") as f:
            data = f.read(CONTROL_FILE_SIZE + 1)
    except FileNotFoundError:
        raise ControlFileError(f'could not open control file "{path}": No such file or directory') from None
    except OSError as e:
        raise ControlFileError(f'could not read control file "{path}": {e.strerror}') from None
    # A file of the wrong size is not ours to guess at: PostgreSQL's short-read message, and
    # the same refusal for a file that is too long.
    if len(data) < CONTROL_FILE_SIZE:
        raise ControlFileError(f'could not read file "{path}": read {len(data)} of {CONTROL_FILE_SIZE}')
    if len(data) > CONTROL_FILE_SIZE:
        size = os.path.getsize(path)
        raise ControlFileError(f'incorrect size of control file "{path}": {size} bytes, expected {CONTROL_FILE_SIZE}')
    return ControlFile.unpack(data, path)


def write_control(datadir: str, cf: ControlFile) -> None:
    """Atomically replace the control file: temp file, fsync, rename, fsync dir."""
    gdir = os.path.join(datadir, "global")
    os.makedirs(gdir, exist_ok=True)
    path = os.path.join(gdir, CONTROL_FILE_NAME)
    write_durably(path, cf.pack())


def new_system_identifier() -> int:
    """As BootStrapXLOG: seconds << 32 | microseconds << 12 | pid & 0xFFF."""
    ns = time.time_ns()
    sec, usec = divmod(ns // 1000, 1_000_000)
    return ((sec << 32) | (usec << 12) | (os.getpid() & 0xFFF)) & 0xFFFFFFFFFFFFFFFF
