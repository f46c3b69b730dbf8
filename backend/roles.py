"""Role DDL (CREATE/ALTER/DROP ROLE|USER) and superuser checks, as PostgreSQL's user.c.

Entry point: ``execute_role_stmt(session, node)`` with a pglast parse node
(``CreateRoleStmt``, ``AlterRoleStmt``, ``DropRoleStmt``).  A change is written
into the session's transaction as a ``("role", name, attrs JSON | None)`` change:
the engine WAL-logs it as a KV_ROLE record and it is applied with the rest of
the transaction at commit (storage/roles.py), on the primary and by replay.
Passwords are stored only as verifiers: a pre-hashed ``SCRAM-SHA-256$...`` or
``md5...`` string as is (psql's ``\\password``), anything else hashed with
``password_encryption``.

``require_superuser(session, message)`` is the check the privileged functions call.
"""
from __future__ import annotations

from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from libpq import scram
from libpq.protocol import SQLError
from storage.roles import RoleInfo, all_roles, as_committed, lookup_role

FIRST_USER_OID = 16384

_FLAGS = {"superuser": "superuser", "canlogin": "login", "isreplication": "replication"}
# Accepted and without effect here (one database, no role membership, no row security, no connection
# limit per role).  VALID UNTIL and role memberships are refused (0A000), never silently dropped.
_OPTION_NAMES = {"validUntil": "VALID UNTIL", "addroleto": "IN ROLE", "rolemembers": "ROLE",
                 "adminmembers": "ADMIN"}
_IGNORED = {"createdb", "createrole", "inherit", "bypassrls", "connectionlimit", "sysid"}


def current_role(session: Any) -> RoleInfo | None:
    """The session's role with the attributes committed now (not those it logged in with): what every
    privilege check asks, as PostgreSQL's superuser().  None for sessions without a role (unit tests)."""
    role = getattr(session, "role", None)
    store = getattr(session, "store", None)
    if role is None or store is None:
        return role
    return as_committed(role, store.conn)


def require_superuser(session: Any, message: str) -> None:
    """42501 unless the session's role is a superuser now (sessions without a role: unit tests, trusted)."""
    role = current_role(session)
    if role is not None and not role.superuser:
        raise SQLError("42501", message)


def run_role_sql(session: Any, sql: str) -> str:
    """One role statement's text (backend/parse.py cut it out): parse it into pglast's nodes, execute it."""
    try:
        stmts = parse_sql(sql)
    except ParseError as e:
        raise SQLError("42601", str(e).split(", at location")[0]) from None
    if len(stmts) != 1:
        raise SQLError("0A000", "role commands must be sent as a single statement")
    return execute_role_stmt(session, stmts[0].stmt)


def passwords_to_hash(session: Any, sql: str) -> list[str]:
    """The plain passwords a role statement will store as SCRAM secrets: their PBKDF2 (~4096 HMACs)
    is worth running off the backend's loop first (sql.Session; ``_verifier`` takes the results from
    ``session.verifier_cache``).  [] when there are none, or the statement does not parse."""
    if (session.show_value("password_encryption") or "scram-sha-256") == "md5":
        return []
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return []
    out = []
    for raw in stmts:
        for d in getattr(raw.stmt, "options", None) or ():
            if getattr(d, "defname", None) == "password" and d.arg is not None:
                p = getattr(d.arg, "sval", None)
                if p and scram.parse_verifier(p) is None and not scram.is_md5_verifier(p):
                    out.append(p)
    return out


def _verifier(session: Any, user: str, password: str | None) -> str | None:
    if password is None:
        return None
    if password == "":
        session.notice("empty string is not a valid password, clearing password")
        return None
    if scram.parse_verifier(password) is not None or scram.is_md5_verifier(password):
        return password
    method = session.show_value("password_encryption") or "scram-sha-256"
    if method == "md5":
        return scram.md5_verifier(password, user)
    cached = getattr(session, "verifier_cache", {}).get(password)
    return cached if cached is not None else scram.make_verifier(password).encode()


def _apply_options(session: Any, role: RoleInfo, options: Any) -> None:
    for d in options or ():
        name = d.defname
        if name in _FLAGS:
            setattr(role, _FLAGS[name], bool(d.arg.boolval) if d.arg is not None else True)
        elif name == "password":
            role.password = _verifier(session, role.name, d.arg.sval if d.arg is not None else None)
        elif name in _IGNORED:
            continue
        else:
            raise SQLError("0A000", f"{_OPTION_NAMES.get(name, name)} is not supported")


def _current(session: Any, name: str) -> RoleInfo | None:
    txn = session.txn
    if txn is not None:
        for op, key, value in reversed(txn.changes):
            if op == "role" and key == name:
                return None if value is None else RoleInfo.from_json(name, value)
    return lookup_role(session.store.conn, name)


def _write(session: Any, what: str, name: str, role: RoleInfo | None) -> None:
    txn = session._check_writable(what)
    attrs = None if role is None else role.to_json()
    session.engine.log_change(txn, "role", name, attrs)
    txn.changes.append(("role", name, attrs))


def _next_oid(session: Any) -> int:
    oids = [r.oid for r in all_roles(session.store.conn)]
    txn = session.txn
    if txn is not None:
        oids += [RoleInfo.from_json(k, v).oid for op, k, v in txn.changes if op == "role" and v is not None]
    return max([FIRST_USER_OID - 1, *oids]) + 1


def _rolename(spec: Any) -> str:
    if spec.roletype != 0:    # CURRENT_USER, SESSION_USER, ...
        raise SQLError("0A000", "only role names are supported here")
    return spec.rolename


def execute_role_stmt(session: Any, node: Any) -> str:
    if isinstance(node, ast.CreateRoleStmt):
        kind = "USER" if node.stmt_type == 1 else "ROLE"
        require_superuser(session, "permission denied to create role")
        name = node.role
        if name.startswith("pg_"):
            raise SQLError("42939", f'role name "{name}" is reserved',
                           detail='Role names starting with "pg_" are reserved.')
        if _current(session, name) is not None:
            raise SQLError("42710", f'role "{name}" already exists')
        role = RoleInfo(name, login=(kind == "USER"))
        role.oid = _next_oid(session)
        _apply_options(session, role, node.options)
        _write(session, f"CREATE {kind}", name, role)
        return "CREATE ROLE"
    if isinstance(node, ast.AlterRoleStmt):
        name = _rolename(node.role)
        role = _current(session, name)
        if role is None:
            raise SQLError("42704", f'role "{name}" does not exist')
        me = current_role(session)
        only_password = all(d.defname == "password" for d in node.options or ())
        if me is not None and not me.superuser and not (only_password and me.name == name):
            raise SQLError("42501", "permission denied")
        _apply_options(session, role, node.options)
        _write(session, "ALTER ROLE", name, role)
        return "ALTER ROLE"
    if isinstance(node, ast.DropRoleStmt):
        require_superuser(session, "permission denied to drop role")
        me = getattr(session, "role", None)
        for spec in node.roles:
            name = _rolename(spec)
            role = _current(session, name)
            if role is None:
                if node.missing_ok:
                    session.notice(f'role "{name}" does not exist, skipping')
                    continue
                raise SQLError("42704", f'role "{name}" does not exist')
            if me is not None and me.name == name:
                raise SQLError("55006", "current user cannot be dropped")
            if role.oid == 10:
                raise SQLError("55006", f'cannot drop role {name} because it is required by the database system')
            _write(session, "DROP ROLE", name, None)
        return "DROP ROLE"
    raise SQLError("0A000", "statement not supported")


# ---- pg_roles / pg_authid ---------------------------------------------------
_BOOL, _NAME, _INT4, _TEXT, _OID, _TSTZ = 16, 19, 23, 25, 26, 1184
_COMMON = [("rolname", _NAME), ("rolsuper", _BOOL), ("rolinherit", _BOOL), ("rolcreaterole", _BOOL),
           ("rolcreatedb", _BOOL), ("rolcanlogin", _BOOL), ("rolreplication", _BOOL)]
VIEW_COLUMNS: dict[str, list[tuple[str, int]]] = {
    "pg_roles": _COMMON + [("rolconnlimit", _INT4), ("rolpassword", _TEXT), ("rolvaliduntil", _TSTZ),
                           ("rolbypassrls", _BOOL), ("rolconfig", _TEXT), ("oid", _OID)],
    "pg_authid": [("oid", _OID)] + _COMMON + [("rolbypassrls", _BOOL), ("rolconnlimit", _INT4),
                                             ("rolpassword", _TEXT), ("rolvaliduntil", _TSTZ)],
}


def view_rows(session: Any, rel: str) -> list[list[tuple[Any, int]]]:
    """Rows of pg_roles (password masked) or pg_authid (superusers only, as its ACL)."""
    if rel == "pg_authid":
        require_superuser(session, "permission denied for table pg_authid")
    current = {r.name: r for r in all_roles(session.store.conn)}
    txn = session.txn
    for op, name, attrs in (txn.changes if txn is not None else ()):
        if op == "role":       # this transaction's own role changes are visible to it
            if attrs is None:
                current.pop(name, None)
            else:
                current[name] = RoleInfo.from_json(name, attrs)
    rows = []
    for r in sorted(current.values(), key=lambda r: r.oid):
        v = {"oid": (r.oid, _OID), "rolname": (r.name, _NAME), "rolsuper": (r.superuser, _BOOL),
             "rolinherit": (True, _BOOL), "rolcreaterole": (r.superuser, _BOOL),
             "rolcreatedb": (r.superuser, _BOOL), "rolcanlogin": (r.login, _BOOL),
             "rolreplication": (r.replication, _BOOL), "rolconnlimit": (-1, _INT4),
             "rolvaliduntil": (None, _TSTZ), "rolbypassrls": (r.superuser, _BOOL), "rolconfig": (None, _TEXT),
             "rolpassword": ((r.password if rel == "pg_authid" else "********") if r.password else None, _TEXT)}
        rows.append([v[name] for name, _ in VIEW_COLUMNS[rel]])
    return rows
