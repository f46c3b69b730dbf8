"""Temporary physical replication slots, the kind pg_basebackup -X stream makes (slot.c, walsender.c).

``CREATE_REPLICATION_SLOT "pg_basebackup_N" TEMPORARY PHYSICAL ( RESERVE_WAL )`` creates a slot
that belongs to the walsender process that made it and goes away with the connection, as
PostgreSQL's temporary slots do; ``START_REPLICATION SLOT name ...`` on that connection uses it,
``DROP_REPLICATION_SLOT name`` drops it.  The slots live in the walsender's own memory
(``TempSlots``), so another connection never sees them and a name is unique per connection only.

Not done: persistent slots and logical slots are refused (0A000), and RESERVE_WAL holds no WAL
back from removal (walswitch's checkpoints keep WAL by ``wal_keep_size``; a base backup opens the
segments it sends at its start).  Name checks and messages are ReplicationSlotValidateName's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from libpq import protocol as P
from walsender import replication_commands as RC
from walsender.basebackup import def_boolean

NAMEDATALEN = 64


@dataclass
class TempSlot:
    name: str
    reserve_wal: bool


@dataclass
class TempSlots:
    slots: dict[str, TempSlot] = field(default_factory=dict)

    def create(self, cmd: RC.CreateSlot) -> bytes:
        """The slot, and CREATE_REPLICATION_SLOT's answer (slot_name, consistent_point, snapshot_name,
        output_plugin; CommandComplete)."""
        validate_name(cmd.slot)
        if cmd.logical:
            raise P.SQLError("0A000", "logical replication is not supported by walswitch")
        reserve_wal = False
        for name, arg in cmd.options:
            if name == "reserve_wal":
                reserve_wal = def_boolean(name, arg)
            else:
                raise P.SQLError("XX000", f"unrecognized option: {name}")
        if not cmd.temporary:
            raise P.SQLError("0A000", "only temporary physical replication slots are supported by walswitch")
        if cmd.slot in self.slots:
            raise P.SQLError("42710", f'replication slot "{cmd.slot}" already exists')
        self.slots[cmd.slot] = TempSlot(cmd.slot, reserve_wal)
        cols = [(c, P.TEXTOID) for c in ("slot_name", "consistent_point", "snapshot_name", "output_plugin")]
        return (P.row_description(cols) + P.data_row([cmd.slot, "0/0", None, None])
                + P.command_complete("CREATE_REPLICATION_SLOT"))

    def drop(self, cmd: RC.DropSlot) -> bytes:
        if self.slots.pop(cmd.slot, None) is None:
            raise P.SQLError("42704", f'replication slot "{cmd.slot}" does not exist')
        return P.command_complete("DROP_REPLICATION_SLOT")

    def acquire(self, name: str) -> TempSlot:
        """START_REPLICATION SLOT name: only a slot this connection created exists here."""
        slot = self.slots.get(name)
        if slot is None:
            raise P.SQLError("42704", f'replication slot "{name}" does not exist')
        return slot


def validate_name(name: str) -> None:
    if not name:
        raise P.SQLError("42602", f'replication slot name "{name}" is too short')
    if len(name.encode()) >= NAMEDATALEN:
        raise P.SQLError("42622", f'replication slot name "{name}" is too long')
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise P.SQLError("42602", f'replication slot name "{name}" contains invalid character',
                         hint="Replication slot names may only contain lower case letters, numbers, and the "
                              "underscore character.")

