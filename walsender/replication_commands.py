"""Parser for the replication commands a walsender accepts (PostgreSQL 15's repl_gram.y).

Only what a physical walsender needs; the grammar follows PostgreSQL 15::

    IDENTIFY_SYSTEM
    SHOW name
    TIMELINE_HISTORY tli
    START_REPLICATION [SLOT slot_name] [PHYSICAL] X/X [TIMELINE tli]
    START_REPLICATION SLOT slot_name LOGICAL X/X [( options )]      (refused later)
    BASE_BACKUP [( option [value] [, ...] )]                         (options: see walsender.py)
    CREATE_REPLICATION_SLOT / DROP_REPLICATION_SLOT / READ_REPLICATION_SLOT  (refused later)

each optionally followed by a semicolon.  Keywords are upper case only, as
in PostgreSQL's scanner (``identify_system`` is not a replication command).  A string whose first word is not a replication keyword is
``NotReplicationCommand`` (PostgreSQL answers those with "cannot execute SQL
commands in WAL sender for physical replication"); a replication command
that does not parse raises ``SQLError('42601', 'syntax error')`` as
PostgreSQL's replication grammar does.  Nothing here touches the server.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from libpq.protocol import SQLError

KEYWORDS = ("IDENTIFY_SYSTEM", "SHOW", "TIMELINE_HISTORY", "START_REPLICATION", "BASE_BACKUP",
            "CREATE_REPLICATION_SLOT", "DROP_REPLICATION_SLOT", "READ_REPLICATION_SLOT")


class NotReplicationCommand(Exception):
    """The text is not a replication command (an SQL statement, or nothing known)."""


@dataclass(frozen=True)
class IdentifySystem:
    pass


@dataclass(frozen=True)
class Show:
    name: str


@dataclass(frozen=True)
class TimelineHistory:
    timeline: int


@dataclass(frozen=True)
class StartReplication:
    startpoint: int
    timeline: int = 0            # 0: not given (the server's current timeline)
    slot: str | None = None
    logical: bool = False


@dataclass(frozen=True)
class BaseBackup:
    options: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SlotCommand:
    """CREATE/DROP/READ_REPLICATION_SLOT: parsed only far enough to refuse them."""
    command: str
    slot: str | None


# Tokens: RECPTR (hex/hex), unsigned integer, single-quoted string, double-quoted
# identifier, identifier, punctuation.
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<recptr>[0-9A-Fa-f]+/[0-9A-Fa-f]+)
    | (?P<uconst>\d+)(?![A-Za-z_0-9])
    | '(?P<sconst>(?:[^']|'')*)'
    | "(?P<qident>(?:[^"]|"")+)"
    | (?P<ident>[A-Za-z_\x80-\uffff][A-Za-z_0-9$.\x80-\uffff]*)
    | (?P<punct>[(),;=])
    )""", re.VERBOSE)


@dataclass
class Tok:
    kind: str       # recptr uconst sconst qident ident punct
    text: str

    def is_kw(self, kw: str) -> bool:
        return self.kind == "ident" and self.text == kw


def _syntax_error() -> SQLError:
    return SQLError("42601", "syntax error")


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _syntax_error()
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        val = m.group(kind)
        if kind == "sconst":
            val = val.replace("''", "'")
        elif kind == "qident":
            val = val.replace('""', '"')
        out.append(Tok(kind, val))
    return out


def _parse_recptr(text: str) -> int:
    hi, lo = text.split("/")
    if len(hi) > 8 or len(lo) > 8:
        raise SQLError("42601", "invalid streaming start location")
    return (int(hi, 16) << 32) | int(lo, 16)


class _Parser:
    def __init__(self, toks: list[Tok]):
        self.toks = toks
        self.i = 0

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise _syntax_error()
        self.i += 1
        return t

    def accept_kw(self, kw: str) -> bool:
        t = self.peek()
        if t is not None and t.is_kw(kw):
            self.i += 1
            return True
        return False

    def accept_punct(self, p: str) -> bool:
        t = self.peek()
        if t is not None and t.kind == "punct" and t.text == p:
            self.i += 1
            return True
        return False

    def expect_uconst(self) -> int:
        t = self.take()
        if t.kind != "uconst":
            raise _syntax_error()
        return int(t.text)

    def expect_name(self) -> str:
        t = self.take()
        if t.kind == "ident":
            return t.text.lower()
        if t.kind == "qident":
            return t.text
        raise _syntax_error()

    def end(self) -> None:
        while self.accept_punct(";"):
            pass
        if self.peek() is not None:
            raise _syntax_error()


def parse(text: str) -> object:
    """Parse one replication command; see the module docstring for the errors."""
    try:
        toks = tokenize(text)
    except SQLError:
        first = text.strip().split(None, 1)[0] if text.strip() else ""
        if first.rstrip(";") not in KEYWORDS:
            raise NotReplicationCommand(text) from None
        raise
    if not toks or toks[0].kind != "ident" or toks[0].text not in KEYWORDS:
        raise NotReplicationCommand(text)
    p = _Parser(toks)
    kw = p.take().text
    if kw == "IDENTIFY_SYSTEM":
        p.end()
        return IdentifySystem()
    if kw == "SHOW":
        name = p.expect_name()
        p.end()
        return Show(name)
    if kw == "TIMELINE_HISTORY":
        tli = p.expect_uconst()
        p.end()
        if tli <= 0 or tli > 0xFFFFFFFF:
            raise SQLError("42601", f"invalid timeline {tli}")
        return TimelineHistory(tli)
    if kw == "START_REPLICATION":
        slot = None
        if p.accept_kw("SLOT"):
            slot = p.expect_name()
        logical = False
        if p.accept_kw("LOGICAL"):
            logical = True
            if slot is None:
                raise _syntax_error()
        else:
            p.accept_kw("PHYSICAL")
        t = p.take()
        if t.kind != "recptr":
            raise _syntax_error()
        start = _parse_recptr(t.text)
        tli = 0
        if logical:
            # Options of logical decoding: parsed loosely, refused by the walsender.
            if p.accept_punct("("):
                depth = 1
                while depth:
                    t = p.take()
                    if t.kind == "punct" and t.text == "(":
                        depth += 1
                    elif t.kind == "punct" and t.text == ")":
                        depth -= 1
        elif p.accept_kw("TIMELINE"):
            tli = p.expect_uconst()
            if tli <= 0 or tli > 0xFFFFFFFF:
                raise SQLError("42601", f"invalid timeline {tli}")
        p.end()
        return StartReplication(start, tli, slot, logical)
    if kw == "BASE_BACKUP":
        opts: dict[str, str | None] = {}
        if p.accept_punct("("):
            while True:
                name = p.expect_name()
                value: str | None = None
                t = p.peek()
                if t is not None and not (t.kind == "punct" and t.text in ",)"):
                    t = p.take()
                    if t.kind == "punct":
                        raise _syntax_error()
                    value = t.text
                if name.lower() in opts:
                    raise SQLError("42601", f'duplicate option "{name.lower()}"')
                opts[name.lower()] = value
                if p.accept_punct(")"):
                    break
                if not p.accept_punct(","):
                    raise _syntax_error()
        else:
            # PostgreSQL's legacy syntax: LABEL 'x' PROGRESS FAST WAL NOWAIT MAX_RATE n ...
            while p.peek() is not None and p.peek().kind == "ident":  # type: ignore[union-attr]
                name = p.take().text.lower()
                value = None
                t = p.peek()
                if t is not None and t.kind in ("sconst", "uconst"):
                    value = p.take().text
                opts[name] = value
        p.end()
        return BaseBackup(opts)
    # Slot commands: name the slot if we can, refuse later.
    slot = None
    t = p.peek()
    if t is not None and t.kind in ("ident", "qident"):
        slot = t.text
    return SlotCommand(kw, slot)
