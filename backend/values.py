"""SQL values: ``(python value, type oid)`` pairs, their text output, input checks and casts.

Used by the executor (backend/sql.py), the SQL functions (backend/functions.py) and the extended
protocol's parameters and binary results (backend/extended.py).
"""
from __future__ import annotations

import datetime
import re
from typing import Any

from backend.nodes import (
    BOOL, CAST_TYPES, FLOAT8, INT4, INT8, INTERVAL, NAME, NUMERIC, OID, PG_LSN, TEXT, TIMESTAMPTZ, TYPE_NAMES, UNKNOWN,
    XID, Value
)
from libpq.protocol import SQLError
from xlog.lsn import format_lsn, parse_lsn


def format_timestamptz(unix_us: int) -> str:
    """PostgreSQL's timestamptz text in TimeZone UTC: trailing zeros of the fraction dropped."""
    secs, us = divmod(int(unix_us), 1_000_000)
    dt = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    s = dt.strftime("%Y-%m-%d %H:%M:%S")
    if us:
        s += ("." + f"{us:06d}").rstrip("0")
    return s + "+00"


def format_interval(us: int) -> str:
    """An interval of microseconds as PostgreSQL prints it (IntervalStyle postgres)."""
    neg = us < 0
    us = abs(int(us))
    secs, frac = divmod(us, 1_000_000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    out = f"{h:02d}:{m:02d}:{s:02d}"
    if frac:
        out += ("." + f"{frac:06d}").rstrip("0")
    return ("-" if neg else "") + out


def to_text(v: Value) -> str | None:
    """Output form of a value (text protocol)."""
    val, oid = v
    if val is None:
        return None
    if oid == BOOL:
        return "t" if val else "f"
    if oid == PG_LSN:
        return format_lsn(val)
    if oid == TIMESTAMPTZ:
        return format_timestamptz(val)
    if oid == INTERVAL:
        return format_interval(val)
    if oid == FLOAT8:
        f = float(val)
        if f != f or f in (float("inf"), float("-inf")):
            return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(f)]
        return str(int(f)) if f == int(f) and abs(f) < 1e15 else repr(f)
    return str(val)


def as_text(v: Value) -> str | None:
    """A value cast to text (bool casts to 'true'/'false', as ::text does)."""
    val, oid = v
    if val is None:
        return None
    if oid == BOOL:
        return "true" if val else "false"
    return to_text(v)


def _bad_input(typ: str, s: Any) -> SQLError:
    return SQLError("22P02", f'invalid input syntax for type {typ}: "{s}"')


def as_int(v: Value, typ: str = "integer") -> int | None:
    val, oid = v
    if val is None:
        return None
    if oid in (INT4, INT8, OID, XID) or (isinstance(val, int) and not isinstance(val, bool)):
        return int(val)
    if oid in (NUMERIC, FLOAT8):
        return int(round(float(val)))
    s = str(val).strip()
    if not re.fullmatch(r"[-+]?\d+", s):
        raise _bad_input(typ, val)
    return int(s)


def as_bool(v: Value) -> bool | None:
    val, oid = v
    if val is None:
        return None
    if oid == BOOL:
        return bool(val)
    s = str(val).strip().lower()
    if s in ("t", "true", "yes", "y", "on", "1"):
        return True
    if s in ("f", "false", "no", "n", "off", "0"):
        return False
    raise _bad_input("boolean", val)


def as_lsn(v: Value) -> int | None:
    val, oid = v
    if val is None:
        return None
    if oid == PG_LSN:
        return int(val)
    try:
        return parse_lsn(str(val))
    except ValueError:
        raise _bad_input("pg_lsn", val) from None


def cast(v: Value, typename: str) -> Value:
    oid = CAST_TYPES.get(typename)
    if oid is None:
        raise SQLError("42704", f'type "{typename}" does not exist')
    val, src = v
    if val is None:
        return (None, oid)
    if oid in (TEXT, NAME):
        return (as_text(v), oid)
    if oid in (INT4, INT8, OID, XID):
        return (as_int(v, TYPE_NAMES[oid]), oid)
    if oid == BOOL:
        return (as_bool(v), oid)
    if oid == PG_LSN:
        return (as_lsn(v), oid)
    if oid == NUMERIC:
        s = to_text(v) if src != UNKNOWN else str(val).strip()
        if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", s or ""):
            raise _bad_input("numeric", val)
        return (s, NUMERIC)
    if oid == FLOAT8:
        try:
            return (float(val), FLOAT8)
        except (TypeError, ValueError):
            raise _bad_input("double precision", val) from None
    if oid == INTERVAL:
        if src == INTERVAL:
            return v
        m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|min|minutes?)?\s*",
                         str(val))
        if not m:
            raise _bad_input("interval", val)
        mult = {"ms": 1000, "s": 1_000_000, "min": 60_000_000}
        unit = (m.group(2) or "s")
        unit = "ms" if unit.startswith("m") and unit not in ("min", "minute", "minutes") else (
            "min" if unit.startswith("min") else "s")
        return (int(float(m.group(1)) * mult[unit]), INTERVAL)
    if oid == TIMESTAMPTZ:
        if src == TIMESTAMPTZ:
            return v
        raise _bad_input("timestamp with time zone", val)
    return (as_text(v), oid)


def type_name(v: Value) -> str:
    return TYPE_NAMES.get(v[1], "unknown")


