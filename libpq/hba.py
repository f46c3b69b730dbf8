"""pg_hba.conf: parse the file and find the first line that matches a connection.

What it owns: PostgreSQL's client-authentication file syntax (hba.c): one rule per
line, ``#`` comments, double-quoted tokens (a quoted ``"all"`` is a name, not the
keyword), comma lists, ``host``/``hostssl``/``hostnossl`` with an address in CIDR
form or as address + mask, or the keywords ``all``/``samehost``/``samenet``.
``local`` lines are parsed and kept but never match: walswitch listens on TCP only.

Entry points: ``load_hba(path)`` (raises ``HbaError`` with PostgreSQL's
``... in file "F" line N`` message; the caller keeps its old rules on error),
``HbaRules.match(address, ssl_in_use, database, user, is_replication)`` which
returns the first matching ``HbaLine`` or None (the caller then sends 28000 with
``no_match_message``).  Pure functions over text: the backend (startup phase) and
any walsender may use it.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

METHODS = ("trust", "reject", "scram-sha-256", "md5", "password")
CONN_TYPES = ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")

Address = ipaddress.IPv4Network | ipaddress.IPv6Network


class HbaError(Exception):
    """A bad pg_hba.conf; the message is one line naming file and line."""


@dataclass(frozen=True)
class Token:
    text: str
    quoted: bool

    def is_kw(self, word: str) -> bool:
        return not self.quoted and self.text == word


@dataclass
class HbaLine:
    line_no: int
    raw: str
    conn_type: str
    databases: list[Token]
    users: list[Token]
    address: Address | None     # None with a keyword in addr_kw, or for local lines
    addr_kw: str | None          # 'all', 'samehost', 'samenet'
    method: str
    options: dict[str, str] = field(default_factory=dict)


def tokenize_line(line: str) -> list[list[Token]]:
    """Split one line into fields; each field is a comma list of tokens."""
    fields: list[list[Token]] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t\r":
            i += 1
        if i >= n or line[i] == "#":
            break
        current: list[Token] = []
        while True:
            buf, quoted, in_quote = [], False, False
            while i < n:
                c = line[i]
                if in_quote:
                    if c == '"':
                        in_quote = False
                    else:
                        buf.append(c)
                elif c == '"':
                    in_quote = quoted = True
                elif c in " \t\r,#":
                    break
                else:
                    buf.append(c)
                i += 1
            if in_quote:
                raise ValueError("unterminated quoted string")
            current.append(Token("".join(buf), quoted))
            if i < n and line[i] == ",":
                i += 1
                continue
            break
        fields.append(current)
    return fields


def _parse_address(text: str, mask: str | None) -> Address:
    if mask is not None:
        net_mask = ipaddress.ip_address(mask)
        prefix = bin(int(net_mask)).count("1")
        if int(net_mask) != ((1 << net_mask.max_prefixlen) - 1) ^ ((1 << (net_mask.max_prefixlen - prefix)) - 1):
            raise ValueError(f'invalid IP mask "{mask}"')
        return ipaddress.ip_network(f"{text}/{prefix}", strict=False)
    if "/" not in text:
        raise ValueError(f'invalid IP address "{text}"')  # bare address without a mask column
    return ipaddress.ip_network(text, strict=False)


def parse_line(fields: list[list[Token]], line_no: int, raw: str) -> HbaLine:
    def single(idx: int, what: str) -> Token:
        if idx >= len(fields):
            raise ValueError(f"end-of-line before {what} specification")
        if len(fields[idx]) > 1:
            raise ValueError(f"multiple values specified for {what}")
        return fields[idx][0]

    ctype = single(0, "connection type").text
    if ctype not in CONN_TYPES:
        raise ValueError(f'invalid connection type "{ctype}"')
    if len(fields) < 2:
        raise ValueError("end-of-line before database specification")
    databases = fields[1]
    if len(fields) < 3:
        raise ValueError("end-of-line before role specification")
    users = fields[2]
    idx = 3
    address: Address | None = None
    addr_kw: str | None = None
    if ctype != "local":
        tok = single(idx, "IP address")
        idx += 1
        if tok.is_kw("all") or tok.is_kw("samehost") or tok.is_kw("samenet"):
            addr_kw = tok.text
        else:
            mask = None
            if "/" not in tok.text:
                mask_tok = single(idx, "netmask")
                mask = mask_tok.text
                idx += 1
            try:
                address = _parse_address(tok.text, mask)
            except ValueError as e:
                if "mask" in str(e):
                    raise ValueError(f'invalid IP mask "{mask}": {e}') from None
                raise ValueError(f'invalid IP address "{tok.text}": {e}') from None
    method = single(idx, "authentication method").text
    if method not in METHODS:
        raise ValueError(f'invalid authentication method "{method}"')
    options: dict[str, str] = {}
    for f in fields[idx + 1:]:
        for t in f:
            name, eq, value = t.text.partition("=")
            if not eq:
                raise ValueError(f'authentication option not in name=value format: {t.text}')
            options[name] = value
    if "clientcert" in options:
        if ctype != "hostssl":
            raise ValueError('clientcert can only be configured for "hostssl" rows')
        if options["clientcert"] not in ("verify-ca", "verify-full"):
            raise ValueError(f'invalid value for clientcert: "{options["clientcert"]}"')
    return HbaLine(line_no, raw, ctype, databases, users, address, addr_kw, method, options)


@dataclass
class HbaRules:
    lines: list[HbaLine]
    path: str = ""

    def match(self, address: str | None, ssl_in_use: bool, database: str, user: str,
              is_replication: bool) -> HbaLine | None:
        """The first line whose type, database, user and address all match (PostgreSQL's check_hba)."""
        ip = _client_ip(address)
        for line in self.lines:
            if line.conn_type == "local" or ip is None:
                continue        # no Unix socket in walswitch
            if line.conn_type == "hostssl" and not ssl_in_use:
                continue
            if line.conn_type == "hostnossl" and ssl_in_use:
                continue
            if line.conn_type in ("hostgssenc",):
                continue        # no GSSAPI encryption
            if not _addr_matches(line, ip):
                continue
            if not _db_matches(line.databases, database, user, is_replication):
                continue
            if not _user_matches(line.users, user):
                continue
            return line
        return None


def no_match_message(address: str | None, user: str, database: str, ssl_in_use: bool,
                     is_replication: bool) -> str:
    """PostgreSQL's 28000 message when no line matches (ClientAuthentication)."""
    ssl = "on" if ssl_in_use else "off"
    if is_replication:
        return f'no pg_hba.conf entry for replication connection from host "{address}", user "{user}", SSL {ssl}'
    return f'no pg_hba.conf entry for host "{address}", user "{user}", database "{database}", SSL {ssl}'


def _client_ip(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _local_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for name in ("localhost", socket.gethostname()):
        try:
            for info in socket.getaddrinfo(name, None):
                out.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except OSError:
            pass
    return out


def _addr_matches(line: HbaLine, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if line.addr_kw == "all":
        return True
    if line.addr_kw == "samehost":
        return ip in _local_addresses() or ip.is_loopback
    if line.addr_kw == "samenet":
        # Our own addresses' /24 (v4) or /64 (v6) networks: a close approximation of
        # PostgreSQL's interface netmasks without reading the interface list.
        for own in _local_addresses():
            if own.version == ip.version:
                prefix = 24 if own.version == 4 else 64
                if ip in ipaddress.ip_network(f"{own}/{prefix}", strict=False):
                    return True
        return ip.is_loopback
    assert line.address is not None
    return ip.version == line.address.version and ip in line.address


def _db_matches(toks: list[Token], database: str, user: str, is_replication: bool) -> bool:
    for t in toks:
        if is_replication:
            if t.is_kw("replication"):
                return True
            continue        # physical replication matches only the keyword
        if t.is_kw("all"):
            return True
        if t.is_kw("sameuser") and database == user:
            return True
        if t.is_kw("replication"):
            continue
        if t.text == database:
            return True
    return False


def _user_matches(toks: list[Token], user: str) -> bool:
    for t in toks:
        if t.is_kw("all"):
            return True
        if t.text == user:
            return True
    return False


def parse_hba(text: str, path: str = "pg_hba.conf") -> HbaRules:
    """Parse the whole file; the first bad line raises HbaError (PostgreSQL rejects the file)."""
    lines: list[HbaLine] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        try:
            fields = tokenize_line(raw)
            if not fields:
                continue
            if fields[0][0].is_kw("include") or fields[0][0].text.startswith("include"):
                raise ValueError("include directives are not supported")
            lines.append(parse_line(fields, no, raw.strip()))
        except ValueError as e:
            raise HbaError(f'{e} in file "{path}" line {no}') from None
    return HbaRules(lines, path)


def load_hba(path: str) -> HbaRules:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise HbaError(f'could not open configuration file "{path}": {e.strerror}') from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise HbaError(f'invalid byte sequence for encoding "UTF8" in file "{path}" line {line}') from None
    return parse_hba(text, path)


def default_hba(auth_host: str, auth_local: str) -> str:
    """The file ``walswitch init`` writes: PostgreSQL's initdb default, loopback only."""
    return f"""# PostgreSQL Client Authentication Configuration File (walswitch)
# ===================================================
#
# TYPE  DATABASE        USER            ADDRESS                 METHOD
#
# walswitch listens on TCP only: "local" lines are accepted but never match.

# "local" is for Unix domain socket connections only
local   all             all                                     {auth_local}
# IPv4 local connections:
host    all             all             127.0.0.1/32            {auth_host}
# IPv6 local connections:
host    all             all             ::1/128                 {auth_host}
# Allow replication connections from localhost, by a user with the
# replication privilege.
local   replication     all                                     {auth_local}
host    replication     all             127.0.0.1/32            {auth_host}
host    replication     all             ::1/128                 {auth_host}
"""
