"""Settings a client sends in its startup packet, checked as PostgreSQL's process_startup_options.

A StartupMessage may carry, besides ``user``, ``database``, ``replication`` and the ``_pq_.*``
protocol options (libpq/protocol.py answers those), any PostgreSQL setting (``application_name``,
``DateStyle``, ``statement_timeout`` ...), and ``options`` with ``-c name=value`` / ``--name=value``
switches.  After authentication each one is set as by ``SET`` at connection start: a name PostgreSQL
does not know is FATAL 42704, one that cannot be set then is refused with PostgreSQL's 55P02 / 42501,
a bad value of a setting walswitch implements is 22023.  The accepted settings that walswitch
implements (and custom ``prefix.name`` ones) become the session's values (``SHOW`` reports them;
``statement_timeout`` applies).
"""
from __future__ import annotations

from libpq.protocol import SQLError
from utils import config as cfgmod
from utils.pg_settings import PG_SETTING_CONTEXT, is_custom_name

# Startup packet keys that are not settings.
_NOT_SETTINGS = {"user", "database", "options", "replication"}


def split_options(options: str) -> list[str]:
    """``options`` split at unescaped whitespace, a backslash taking the next character (pg_split_opts)."""
    out: list[str] = []
    cur: list[str] = []
    i, n = 0, len(options)
    while i < n:
        ch = options[i]
        if ch.isspace():
            if cur:
                out.append("".join(cur))
                cur = []
        elif ch == "\\" and i + 1 < n:
            i += 1
            cur.append(options[i])
        else:
            cur.append(ch)
        i += 1
    if cur:
        out.append("".join(cur))
    return out


def _option_pairs(options: str) -> list[tuple[str, str]]:
    """(name, value) of every ``-c name=value``, ``-cname=value`` and ``--name=value`` in ``options``."""
    words = split_options(options)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        item = None
        if w == "-c" and i + 1 < len(words):
            item = words[i + 1]
            i += 1
        elif w.startswith("-c") and len(w) > 2:
            item = w[2:]
        elif w.startswith("--") and len(w) > 2:
            item = w[2:]
        i += 1
        if item is None:
            continue
        name, eq, value = item.partition("=")
        if not eq:
            raise SQLError("42601", f"-c {item} requires a value" if not w.startswith("--")
                           else f"--{item} requires a value")
        pairs.append((name.replace("-", "_"), value))
    return pairs


def startup_settings(params: dict[str, str], superuser: bool) -> dict[str, str]:
    """The settings of a startup packet as name -> value (lower-case names), or SQLError as PostgreSQL."""
    pairs = [(k, v) for k, v in params.items() if k not in _NOT_SETTINGS and not k.startswith("_pq_.")]
    pairs += _option_pairs(params.get("options", ""))
    out: dict[str, str] = {}
    for raw_name, value in pairs:
        name = raw_name.lower()
        ctx = PG_SETTING_CONTEXT.get(name)
        if ctx is None:
            if is_custom_name(name):
                out[name] = value
                continue
            raise SQLError("42704", f'unrecognized configuration parameter "{raw_name}"')
        if ctx == "internal":
            raise SQLError("55P02", f'parameter "{name}" cannot be changed')
        if ctx == "postmaster":
            raise SQLError("55P02", f'parameter "{name}" cannot be changed without restarting the server')
        if ctx == "sighup":
            raise SQLError("55P02", f'parameter "{name}" cannot be changed now')
        if ctx in ("superuser", "superuser-backend") and not superuser:
            raise SQLError("42501", f'permission denied to set parameter "{name}"')
        setting = cfgmod.SETTINGS.get(name)
        if setting is not None:
            try:
                cfgmod.convert(setting, value)
            except cfgmod.ConfigError as e:
                raise SQLError("22023", str(e)) from None
            out[name] = value
        # Other PostgreSQL settings (DateStyle, client_encoding, ...) are accepted and keep walswitch's
        # one value, which the ParameterStatus messages report, as before.
    return out
