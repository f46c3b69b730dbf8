"""``walswitch init``: a new primary data directory, as initdb makes one.

Layout: ``walswitch.conf``, ``global/walswitch_control`` (our pg_control),
``pg_wal/`` with ``archive_status/``, ``base/kv.sqlite`` (the key/value
store), ``log/``.  WAL starts, as in PostgreSQL, in segment 1 of timeline 1
with a shutdown checkpoint whose redo points at itself.
"""
from __future__ import annotations

import os
import pwd
import time

from libpq import scram
from libpq.hba import default_hba
from storage.kvstore import KVStore
from storage.roles import BOOTSTRAP_OID, RoleInfo, apply_role_change

from xlog import constants as C
from xlog.control import ControlFile, DBState, new_system_identifier, write_control
from xlog.durable import fsync_dir
from xlog.lsn import segment_start, valid_segsize
from xlog.record import CheckPoint
from xlog.writer import WalWriter

FIRST_NORMAL_XID = 3
FIRST_OID = 16384

CONF_TEMPLATE = """\
# walswitch configuration (postgresql.conf syntax)
listen_addresses = 'localhost'
port = {port}
max_wal_senders = 10
wal_keep_size = 0
archive_mode = off
archive_command = ''
archive_timeout = 0
checkpoint_timeout = 5min
# standby settings (used when standby.signal exists)
#primary_conninfo = ''
#restore_command = ''
#standby_wal_coordination = stop_walreceiver
"""


class InitError(RuntimeError):
    pass


def bootstrap_superuser_name(name: str | None) -> str:
    """initdb's rule: -U, else the OS user.  initdb refuses root; we allow it and call the role postgres."""
    if name:
        return name
    user = pwd.getpwuid(os.geteuid()).pw_name
    return "postgres" if os.geteuid() == 0 else user


def initdb(datadir: str, wal_segsize_mb: int = 16, port: int | None = None, superuser: str | None = None,
           password: str | None = None, auth_host: str = "trust", auth_local: str = "trust") -> int:
    """Create the data directory; returns the system identifier."""
    segsize = wal_segsize_mb * 1024 * 1024
    if not valid_segsize(segsize):
        raise InitError(f"argument of --wal-segsize must be a power of 2 between 1 and 1024: {wal_segsize_mb}")
    if port is not None and not 1 <= port <= 65535:
        raise InitError(f"invalid port number: {port} (must be 1 .. 65535)")
    if os.path.exists(datadir) and os.listdir(datadir):
        raise InitError(f'directory "{datadir}" exists but is not empty')
    try:
        os.makedirs(datadir, mode=0o700, exist_ok=True)
        os.chmod(datadir, 0o700)        # an existing empty directory too, as initdb's "fixing permissions"
        for sub in ("global", "pg_wal", "pg_wal/archive_status", "base", "log"):
            os.makedirs(os.path.join(datadir, sub), mode=0o700, exist_ok=True)
    except OSError as e:
        raise InitError(f'could not create directory "{datadir}": {e.strerror}') from None
    with open(os.path.join(datadir, "walswitch.conf"), "w", encoding="utf-8") as f:
        f.write(CONF_TEMPLATE.format(port=5432 if port is None else port))
    sysid = new_system_identifier()
    start = segment_start(1, segsize)
    writer = WalWriter(os.path.join(datadir, "pg_wal"), 1, segsize, sysid, start, 0)
    ckpt_lsn = writer.next_record_lsn
    now = int(time.time())
    ckpt = CheckPoint(redo=ckpt_lsn, this_tli=1, prev_tli=1, next_xid=FIRST_NORMAL_XID,
                      time=int(time.time()))
    writer.insert(C.RM_XLOG_ID, C.XLOG_CHECKPOINT_SHUTDOWN, 0, ckpt.pack())
    writer.flush()
    writer.close()
    store = KVStore(os.path.join(datadir, "base", "kv.sqlite"))
    role = RoleInfo(bootstrap_superuser_name(superuser), superuser=True, login=True, replication=True,
                    password=scram.make_verifier(password).encode() if password else None,
                    oid=BOOTSTRAP_OID)
    apply_role_change(store.conn, role.name, role.to_json())
    store.close()
    with open(os.path.join(datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
        f.write(default_hba(auth_host, auth_local))
    os.chmod(os.path.join(datadir, "pg_hba.conf"), 0o600)
    cf = ControlFile(system_identifier=sysid, state=DBState.SHUTDOWNED, checkpoint_lsn=ckpt_lsn,
                     redo_lsn=ckpt_lsn, timeline=1, prev_timeline=1, min_recovery_point=0,
                     min_recovery_point_tli=0, backup_end_required=False, wal_segsize=segsize,
                     next_xid=FIRST_NORMAL_XID, time=now)
    write_control(datadir, cf)
    fsync_dir(datadir)
    return sysid
