"""backup_label: written by BASE_BACKUP (walsender/basebackup.py), used once by the first start of a copy.

PostgreSQL's lines (START WAL LOCATION, CHECKPOINT LOCATION, BACKUP METHOD, BACKUP FROM,
START TIME, LABEL, START TIMELINE) plus two of ours, END WAL LOCATION and END TIMELINE: a
walswitch primary writes no backup-end record, so the label says where the copy becomes
consistent.

``consume(datadir)`` is what the startup does first, as PostgreSQL's read_backup_label in
StartupXLOG: if the file is there, recovery starts at its checkpoint and is consistent at its
end point (control file: checkpoint, redo, min_recovery_point, backup_start/backup_end, state
in archive recovery), then the file becomes ``backup_label.old``.  ``walswitch basebackup``
calls it right after unpacking; a copy made by PostgreSQL's pg_basebackup keeps the file until
``walswitch start``.  ``remove_temp_files`` clears what a base backup killed mid-way left.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from xlog.control import ControlFile, DBState, read_control, write_control
from xlog.durable import fsync_dir
from xlog.lsn import format_lsn, parse_lsn, segment_name, segno_of

LABEL_FILE = "backup_label"
LABEL_OLD = "backup_label.old"
TEMP_PREFIX = "pgsql_tmp"       # PostgreSQL's PG_TEMP_FILE_PREFIX: never copied, removed at start


class BackupLabelError(ValueError):
    pass


@dataclass(frozen=True)
class BackupLabel:
    start_lsn: int
    checkpoint_lsn: int
    start_tli: int
    label: str = ""
    start_time: float = 0.0
    end_lsn: int = 0            # 0: not given (a PostgreSQL label)
    end_tli: int = 0

    def render(self, segsize: int) -> str:
        seg = segment_name(self.start_tli, segno_of(self.start_lsn, segsize), segsize)
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.start_time))
        return (f"START WAL LOCATION: {format_lsn(self.start_lsn)} (file {seg})\n"
                f"CHECKPOINT LOCATION: {format_lsn(self.checkpoint_lsn)}\n"
                "BACKUP METHOD: streamed\n"
                "BACKUP FROM: primary\n"
                f"START TIME: {when}\n"
                f"LABEL: {self.label}\n"
                f"START TIMELINE: {self.start_tli}\n"
                f"END WAL LOCATION: {format_lsn(self.end_lsn)}\n"
                f"END TIMELINE: {self.end_tli}\n")

    @classmethod
    def parse(cls, text: str) -> "BackupLabel":
        fields: dict[str, str] = {}
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            if sep:
                fields[k.strip()] = v.strip()
        try:
            start = parse_lsn(fields["START WAL LOCATION"].split()[0])
            ckpt = parse_lsn(fields["CHECKPOINT LOCATION"])
            tli = int(fields.get("START TIMELINE", "0") or 0)
            end = parse_lsn(fields["END WAL LOCATION"]) if "END WAL LOCATION" in fields else 0
            end_tli = int(fields.get("END TIMELINE", "0") or 0)
        except (KeyError, ValueError, IndexError):
            raise BackupLabelError(f'invalid data in file "{LABEL_FILE}"') from None
        return cls(start, ckpt, tli, fields.get("LABEL", ""), 0.0, end, end_tli)

    def apply(self, cf: ControlFile) -> ControlFile:
        """The control file a recovery from this backup starts with."""
        tli = self.start_tli or cf.timeline
        end = max(self.end_lsn, cf.min_recovery_point if cf.state == DBState.IN_ARCHIVE_RECOVERY else 0)
        return cf.with_changes(state=DBState.IN_ARCHIVE_RECOVERY, checkpoint_lsn=self.checkpoint_lsn,
                               redo_lsn=self.start_lsn, timeline=tli,
                               min_recovery_point=end, min_recovery_point_tli=self.end_tli or tli,
                               backup_start_lsn=self.start_lsn, backup_end_lsn=self.end_lsn)


def read(datadir: str) -> BackupLabel | None:
    try:
        with open(os.path.join(datadir, LABEL_FILE), encoding="utf-8", errors="replace") as f:
            return BackupLabel.parse(f.read())
    except FileNotFoundError:
        return None


def consume(datadir: str) -> BackupLabel | None:
    """Apply DIR/backup_label to the control file and rename it backup_label.old; None if absent."""
    label = read(datadir)
    if label is None:
        return None
    write_control(datadir, label.apply(read_control(datadir)))
    os.replace(os.path.join(datadir, LABEL_FILE), os.path.join(datadir, LABEL_OLD))
    fsync_dir(datadir)
    return label


def remove_temp_files(datadir: str) -> int:
    """RemovePgTempFiles for the data directory's top level: what a base backup killed mid-way left
    (its store snapshot).  Run by the startup, when no walsender can be using one."""
    removed = 0
    for name in os.listdir(datadir):
        if name.startswith(TEMP_PREFIX):
            path = os.path.join(datadir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            removed += 1
    return removed
