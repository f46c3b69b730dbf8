"""Roles: the ``roles`` table beside ``kv`` in ``base/kv.sqlite`` (our pg_authid).

A role is one row: its name and its attributes as JSON (``RoleInfo``).  Roles are
WAL-logged like kv rows: a ROLE change is a KV_ROLE record in our custom rmgr,
applied at its transaction's commit by the same ``KVStore.apply_many`` that
moves ``applied_lsn`` (change op ``"role"``: value None drops the role), so a
standby, and a standby after promotion, authenticate exactly the roles the
primary committed.  ``initdb`` writes the bootstrap superuser directly, as
PostgreSQL's bootstrap catalog is not WAL-logged either.

Readers: the backend's startup phase (``lookup_role``) and ``pg_roles``.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass

SCHEMA = "CREATE TABLE IF NOT EXISTS roles (name TEXT PRIMARY KEY NOT NULL, attrs TEXT NOT NULL)"
UPSERT = ("INSERT INTO roles (name, attrs) VALUES (?, ?) "
          "ON CONFLICT (name) DO UPDATE SET attrs = excluded.attrs")
DELETE = "DELETE FROM roles WHERE name = ?"
BOOTSTRAP_OID = 10


@dataclass
class RoleInfo:
    name: str
    superuser: bool = False
    login: bool = False
    replication: bool = False
    password: str | None = None     # a SCRAM or md5 verifier, never a plain password
    oid: int = 0

    def to_json(self) -> str:
        d = asdict(self)
        del d["name"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, name: str, text: str) -> "RoleInfo":
        d = json.loads(text)
        return cls(name=name, superuser=bool(d.get("superuser")), login=bool(d.get("login")),
                   replication=bool(d.get("replication")), password=d.get("password"),
                   oid=int(d.get("oid", 0)))


def apply_role_change(conn: sqlite3.Connection, name: str, attrs: str | None) -> None:
    if attrs is None:
        conn.execute(DELETE, (name,))
    else:
        conn.execute(UPSERT, (name, attrs))


def lookup_role(conn: sqlite3.Connection, name: str) -> RoleInfo | None:
    try:
        row = conn.execute("SELECT attrs FROM roles WHERE name = ?", (name,)).fetchone()
    except sqlite3.OperationalError:      # a store from before roles existed
        return None
    return None if row is None else RoleInfo.from_json(name, row[0])


def as_committed(role: RoleInfo, conn: sqlite3.Connection) -> RoleInfo:
    """A logged-in role's attributes as the catalog has them now.  PostgreSQL's superuser() reads
    pg_authid through a cache that every committed role change invalidates, so an ``ALTER ROLE x
    NOSUPERUSER`` takes effect in x's open sessions at their next statement; a dropped role has no
    attribute left (superuser_arg() of a missing role is false)."""
    now = lookup_role(conn, role.name)
    return now if now is not None else RoleInfo(role.name, oid=role.oid)


def all_roles(conn: sqlite3.Connection) -> list[RoleInfo]:
    try:
        rows = conn.execute("SELECT name, attrs FROM roles ORDER BY name").fetchall()
    except sqlite3.OperationalError:
        return []
    return [RoleInfo.from_json(n, a) for n, a in rows]
