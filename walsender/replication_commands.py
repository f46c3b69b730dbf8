"""Parser for the replication commands a walsender accepts (PostgreSQL 15's repl_gram.y).

Only what a physical walsender needs; the grammar follows PostgreSQL 15::

    IDENTIFY_SYSTEM
    SHOW name
    TIMELINE_HISTORY tli
    START_REPLICATION [SLOT slot_name] [PHYSICAL] X/X [TIMELINE tli]
    START_REPLICATION SLOT slot_name LOGICAL X/X [( options )]      (refused later)
    BASE_BACKUP [( option [value] [, ...] )]                         (options: walsender/basebackup.py)
    BASE_BACKUP [LABEL 'x'] [PROGRESS] [FAST] [WAL] [NOWAIT] [MAX_RATE n] [TABLESPACE_MAP]
                [NOVERIFY_CHECKSUMS] [MANIFEST 'x'] [MANIFEST_CHECKSUMS 'x']   (legacy keywords)
    CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL | ( option [value] [, ...] )]
    CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL plugin [...]   (refused later)
    DROP_REPLICATION_SLOT name [WAIT]
    READ_REPLICATION_SLOT name                                       (refused later)

each optionally followed by a semicolon.  Keywords are upper case only, as
in PostgreSQL's scanner (``identify_system`` is not a replication command).  A string whose first word is not a replication keyword is
``NotReplicationCommand`` (PostgreSQL answers those with "cannot execute SQL
commands in WAL sender for physical replication"); a replication command
that does not parse raises ``SQLError('42601', 'syntax error')`` as
PostgreSQL's replication grammar does.  Nothing here touches the server.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


# A generic option's argument, as the grammar's var_value: None (no argument), a number, or a string (a
# quoted string, or a word such as true/on/fast).
OptArg = None | int | float | str


@dataclass(frozen=True)
class BaseBackup:
    """Options in the order given, names lower case; duplicates are left to the options parser, as
    PostgreSQL's parse_basebackup_options reports them.  Legacy keywords arrive as their new names."""
    options: tuple[tuple[str, OptArg], ...] = ()


@dataclass(frozen=True)
class CreateSlot:
    slot: str
    temporary: bool = False
    logical: bool = False
    options: tuple[tuple[str, OptArg], ...] = ()


@dataclass(frozen=True)
class DropSlot:
    slot: str
    wait: bool = False


@dataclass(frozen=True)
class SlotCommand:
    """READ_REPLICATION_SLOT: parsed only far enough to refuse it."""
    command: str
    slot: str | None


# PostgreSQL 15's legacy BASE_BACKUP keywords (repl_gram.y), as the generic options they stand for:
# keyword -> (option name, argument kind: None = none, "s" = string constant, "u" = unsigned integer,
# or the fixed argument the keyword implies).
LEGACY_BASE_BACKUP: dict[str, tuple[str, object]] = {
    "LABEL": ("label", "s"), "PROGRESS": ("progress", None), "FAST": ("checkpoint", ("fast",)),
    "WAL": ("wal", None), "NOWAIT": ("wait", (0,)), "MAX_RATE": ("max_rate", "u"),
    "TABLESPACE_MAP": ("tablespace_map", None), "NOVERIFY_CHECKSUMS": ("verify_checksums", (0,)),
    "MANIFEST": ("manifest", "s"), "MANIFEST_CHECKSUMS": ("manifest_checksums", "s"),
}
LEGACY_SLOT_OPTIONS = {"RESERVE_WAL": "reserve_wal", "EXPORT_SNAPSHOT": "snapshot",
                       "NOEXPORT_SNAPSHOT": "snapshot", "USE_SNAPSHOT": "snapshot", "TWO_PHASE": "two_phase"}


# Tokens: RECPTR (hex/hex), unsigned integer, single-quoted string, double-quoted
# identifier, identifier, punctuation.
_TOKEN = re.compile(r"""
    \s*(?:
      (?P<recptr>[0-9A-Fa-f]+/[0-9A-Fa-f]+)
    | (?P<fconst>-?\d+\.\d*|-?\.\d+|-\d+)(?![A-Za-z_0-9])
    | (?P<uconst>\d+)(?![A-Za-z_0-9])
    | '(?P<sconst>(?:[^']|'')*)'
    | "(?P<qident>(?:[^"]|"")+)"
    | (?P<ident>[A-Za-z_\x80-\uffff][A-Za-z_0-9$.\x80-\uffff]*)
    | (?P<punct>[(),;=])
    )""", re.VERBOSE)


@dataclass
class Tok:
    kind: str       # recptr fconst uconst sconst qident ident punct
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

    def option_arg(self) -> OptArg:
        """generic_option_arg: nothing (before ',' or ')'), a number, a string, or a word."""
        t = self.peek()
        if t is None or (t.kind == "punct" and t.text in ",)"):
            return None
        t = self.take()
        if t.kind == "uconst":
            return int(t.text)
        if t.kind == "fconst":
            return float(t.text) if any(c in t.text for c in ".eE") else int(t.text)
        if t.kind in ("sconst", "qident"):
            return t.text
        if t.kind == "ident":
            return t.text.lower()
        raise _syntax_error()

    def option_list(self) -> list[tuple[str, OptArg]]:
        """The part after '(' of ``( name [arg] [, ...] )``."""
        opts: list[tuple[str, OptArg]] = []
        while True:
            name = self.expect_name()
            opts.append((name, self.option_arg()))
            if self.accept_punct(")"):
                return opts
            if not self.accept_punct(","):
                raise _syntax_error()

    def legacy_options(self, table: dict[str, tuple[str, object]]) -> list[tuple[str, OptArg]]:
        opts: list[tuple[str, OptArg]] = []
        while (t := self.peek()) is not None and t.kind == "ident":
            if t.text not in table:
                raise _syntax_error()
            self.take()
            name, kind = table[t.text]
            if kind == "s":
                a = self.take()
                if a.kind != "sconst":
                    raise _syntax_error()
                opts.append((name, a.text))
            elif kind == "u":
                opts.append((name, self.expect_uconst()))
            elif isinstance(kind, tuple):
                opts.append((name, kind[0]))
            else:
                opts.append((name, None))
        return opts

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
        if p.accept_punct("("):
            opts = p.option_list()
        else:
            opts = p.legacy_options(LEGACY_BASE_BACKUP)
        p.end()
        return BaseBackup(tuple(opts))
    if kw == "CREATE_REPLICATION_SLOT":
        slot = p.expect_name()
        temporary = p.accept_kw("TEMPORARY")
        if p.accept_kw("PHYSICAL"):
            logical = False
        elif p.accept_kw("LOGICAL"):
            logical = True
            p.expect_name()                     # the output plugin
        else:
            raise _syntax_error()
        if p.accept_punct("("):
            opts = p.option_list()
        else:
            opts = []
            while (t := p.peek()) is not None and t.kind == "ident" and t.text in LEGACY_SLOT_OPTIONS:
                p.take()
                opts.append((LEGACY_SLOT_OPTIONS[t.text], None))
        p.end()
        return CreateSlot(slot, temporary, logical, tuple(opts))
    if kw == "DROP_REPLICATION_SLOT":
        slot = p.expect_name()
        wait = p.accept_kw("WAIT")
        p.end()
        return DropSlot(slot, wait)
    # READ_REPLICATION_SLOT: name the slot if we can, refuse later.
    slot = None
    t = p.peek()
    if t is not None and t.kind in ("ident", "qident"):
        slot = t.text
    return SlotCommand(kw, slot)
