"""Settings: ``DIR/walswitch.conf`` in postgresql.conf syntax, plus ``-c name=value``.

Names, defaults, units and wording follow PostgreSQL.  A bad value raises
``ConfigError`` whose message is one line naming the setting and, when it
came from the file, the file and line, as PostgreSQL's
``invalid value for parameter "port": "abc"`` does.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from utils.pg_settings import PG_SETTING_CONTEXT, is_custom_name

CONF_NAME = "walswitch.conf"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str                    # bool, int, real, string, enum
    default: Any
    unit: str | None = None      # base unit for int: "ms", "s", "kB", "MB"
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    desc: str = ""


_TIME_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_MEM_UNITS = {"B": 1 / 1024, "kB": 1, "MB": 1024, "GB": 1024 ** 2, "TB": 1024 ** 3}

SETTINGS: dict[str, Setting] = {s.name: s for s in [
    Setting("listen_addresses", "string", "localhost"),
    Setting("port", "int", 5432, min=1, max=65535),
    Setting("max_connections", "int", 100, min=1, max=10000),
    Setting("password_encryption", "enum", "scram-sha-256", choices=("scram-sha-256", "md5")),
    Setting("superuser_reserved_connections", "int", 3, min=0, max=10000),
    Setting("statement_timeout", "int", 0, unit="ms", min=0, max=2 ** 31 - 1),
    Setting("ssl", "bool", False),
    Setting("ssl_cert_file", "string", "server.crt"),
    Setting("ssl_key_file", "string", "server.key"),
    Setting("ssl_ca_file", "string", ""),
    Setting("ssl_min_protocol_version", "enum", "TLSv1.2", choices=("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")),
    Setting("archive_mode", "enum", "off", choices=("off", "on", "always")),
    Setting("archive_command", "string", ""),
    Setting("archive_timeout", "int", 0, unit="s", min=0, max=2 ** 30),
    Setting("wal_keep_size", "int", 0, unit="MB", min=0, max=2 ** 40),
    Setting("max_wal_senders", "int", 10, min=0, max=64),
    Setting("wal_sender_timeout", "int", 60_000, unit="ms", min=0, max=2 ** 31),
    Setting("checkpoint_timeout", "int", 300, unit="s", min=1, max=86400),
    Setting("max_wal_size", "int", 1024, unit="MB", min=2, max=2 ** 31),
    Setting("fsync", "bool", True),
    Setting("synchronous_commit", "enum", "on", choices=("on", "off", "local", "remote_write", "remote_apply")),
    Setting("commit_delay", "int", 0, unit="us", min=0, max=100000),
    Setting("hot_standby", "bool", True),
    Setting("primary_conninfo", "string", ""),
    Setting("restore_command", "string", ""),
    Setting("archive_cleanup_command", "string", ""),
    Setting("recovery_target_timeline", "string", "latest"),
    Setting("promote_trigger_file", "string", ""),
    Setting("restore_command_timeout", "int", 0, unit="s", min=0, max=2 ** 30),
    Setting("wal_retrieve_retry_interval", "int", 5000, unit="ms", min=1, max=2 ** 31),
    Setting("wal_receiver_timeout", "int", 60_000, unit="ms", min=0, max=2 ** 31),
    Setting("wal_receiver_status_interval", "int", 10, unit="s", min=0, max=2 ** 31 // 1000),
    Setting("standby_wal_coordination", "enum", "stop_walreceiver",
            choices=("concurrent", "stop_walreceiver", "walreceiver_restores")),
    Setting("concurrent_guard", "bool", True),
    Setting("walreceiver_restore_prefetch", "int", 0, min=0, max=64),
    Setting("lag_trace_sample", "int", 0, min=0, max=1_000_000),
    Setting("log_min_messages", "enum", "info",
            choices=("debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice",
                     "warning", "error", "log", "fatal", "panic")),
    Setting("log_destination", "string", "stderr"),
    Setting("logging_collector", "bool", True),
    # Rotation of log/walswitch.log by the postmaster (postmaster/syslogger.py); 0 disables each.
    Setting("log_rotation_age", "int", 1440, unit="min", min=0, max=35791394),
    Setting("log_rotation_size", "int", 10240, unit="kB", min=0, max=2097151),
    Setting("application_name", "string", ""),
    Setting("cluster_name", "string", ""),
]}

# Read-only settings that SHOW reports but nobody sets.
READ_ONLY = {"server_version": "15.0", "server_version_num": "150000", "server_encoding": "UTF8",
             "block_size": "8192", "wal_block_size": "8192", "data_directory_mode": "0700",
             "integer_datetimes": "on", "max_identifier_length": "63"}


def _parse_bool(s: str) -> bool | None:
    v = s.strip().lower()
    if v in ("on", "true", "yes", "1", "t", "y"):
        return True
    if v in ("off", "false", "no", "0", "f", "n"):
        return False
    return None


def _parse_int(s: str, setting: Setting) -> int | None:
    m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", s)
    if not m:
        return None
    num, unit = float(m.group(1)), m.group(2)
    if unit:
        table = _TIME_UNITS if setting.unit in _TIME_UNITS else _MEM_UNITS if setting.unit in _MEM_UNITS else None
        if table is None or unit not in table:
            return None
        num = num * table[unit] / table[setting.unit]
    return int(round(num))


def convert(setting: Setting, raw: str) -> Any:
    """Convert a raw string for a setting; raise ConfigError on a bad value."""
    bad = ConfigError(f'invalid value for parameter "{setting.name}": "{raw}"')
    if setting.kind == "bool":
        v = _parse_bool(raw)
        if v is None:
            raise bad
        return v
    if setting.kind == "int":
        v = _parse_int(raw, setting)
        if v is None:
            raise bad
        if (setting.min is not None and v < setting.min) or (setting.max is not None and v > setting.max):
            unit = f" {setting.unit}" if setting.unit else ""
            raise ConfigError(f'{v}{unit} is outside the valid range for parameter "{setting.name}" '
                              f'({setting.min:g} .. {setting.max:g})')
        return v
    if setting.kind == "enum":
        # As PostgreSQL's parse_enum: any case matches, the value is the choice as spelled there
        # ('tlsv1.3' is TLSv1.3).
        v = raw.strip().lower()
        for choice in setting.choices:
            if choice.lower() == v:
                return choice
        raise ConfigError(f'invalid value for parameter "{setting.name}": "{raw}" '
                          f'(available values: {", ".join(setting.choices)})')
    return raw


_LINE = re.compile(r"""^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=\s*|\s+)(.*?)\s*$""")


def _unquote(value: str) -> tuple[str, str]:
    """Return (value, rest) for a possibly quoted value with trailing comment."""
    if value.startswith("'"):
        out, i = [], 1
        while i < len(value):
            c = value[i]
            if c == "'":
                if i + 1 < len(value) and value[i + 1] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out), value[i + 1:]
            if c == "\\" and i + 1 < len(value):
                out.append(value[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        raise ConfigError("unterminated quoted string")
    m = re.match(r"([^\s#]*)(.*)", value)
    assert m
    return m.group(1), m.group(2)


def decode_lines(path: str, raw: bytes) -> list[str]:
    """Lines of a configuration file; bytes that are not UTF-8 are a one-line error naming the line."""
    lines = []
    for no, line in enumerate(raw.splitlines(), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad = " ".join(f"0x{b:02x}" for b in line[e.start:e.end])
            raise ConfigError(f'invalid byte sequence for encoding "UTF8": {bad} in file "{path}" line {no}') \
                from None
    return lines


def parse_file(path: str) -> dict[str, tuple[str, int]]:
    """name -> (raw value, line number); later lines win, as in PostgreSQL."""
    out: dict[str, tuple[str, int]] = {}
    try:
        with open(path, "rb") as f:
            lines = decode_lines(path, f.read())
    except FileNotFoundError:
        raise ConfigError(f'could not open configuration file "{path}": No such file or directory') from None
    except OSError as e:
        raise ConfigError(f'could not open configuration file "{path}": {e.strerror}') from None
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ConfigError(f'syntax error in file "{path}" line {no}, near token "{stripped.split()[0]}"')
        try:
            value, rest = _unquote(m.group(2))
        except ConfigError:
            raise ConfigError(f'syntax error in file "{path}" line {no}: unterminated quoted string') from None
        if rest.strip() and not rest.strip().startswith("#"):
            raise ConfigError(f'syntax error in file "{path}" line {no}, near token "{rest.strip().split()[0]}"')
        out[m.group(1).lower()] = (value, no)
    return out


@dataclass
class Config:
    """Effective settings of one server."""
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # PostgreSQL's settings that walswitch does not implement, found in postgresql.conf or
    # postgresql.auto.conf and skipped: (file, names).  The postmaster logs them in one line.
    skipped: list[tuple[str, list[str]]] = field(default_factory=list)
    # A reload's bad values (each kept its previous value), one line each as PostgreSQL logs them,
    # and the file that had them.
    errors: list[str] = field(default_factory=list)
    error_file: str | None = None

    def reload_summary(self) -> str | None:
        """PostgreSQL's line after a reload that found bad values (guc-file.l)."""
        if not self.errors:
            return None
        return f'configuration file "{self.error_file}" contains errors; unaffected changes were applied'

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def show(self, name: str) -> str | None:
        """Value as SHOW prints it (with the unit PostgreSQL would show)."""
        name = name.lower()
        if name in READ_ONLY:
            return READ_ONLY[name]
        if name not in SETTINGS:
            return None
        s, v = SETTINGS[name], self.values[name]
        if s.kind == "bool":
            return "on" if v else "off"
        if s.kind == "int" and s.unit:
            return _format_with_unit(v, s.unit)
        return str(v)


def _format_with_unit(v: int, unit: str) -> str:
    if v == 0:
        return "0"          # PostgreSQL shows a zero without a unit
    if unit in _TIME_UNITS:
        ms = v * _TIME_UNITS[unit]
        for u in ("d", "h", "min", "s", "ms"):
            if ms and ms % _TIME_UNITS[u] == 0:
                return f"{int(ms // _TIME_UNITS[u])}{u}"
        return f"{v}{unit}"
    kb = v * _MEM_UNITS[unit]
    for u in ("TB", "GB", "MB", "kB"):
        if kb and kb % _MEM_UNITS[u] == 0:
            return f"{int(kb // _MEM_UNITS[u])}{u}"
    return f"{v}{unit}"


def parse_override(item: str) -> tuple[str, str]:
    """``name=value`` from ``-c``."""
    if "=" not in item:
        raise ConfigError(f'-c {item} requires a value')
    name, value = item.split("=", 1)
    return name.strip().lower(), value.strip()


AUTO_CONF_NAME = "postgresql.auto.conf"
# PostgreSQL's own files, read after walswitch.conf in PostgreSQL's order when present.
PG_CONF_NAMES = ("postgresql.conf", AUTO_CONF_NAME)


def load(datadir: str, overrides: list[tuple[str, str]] | None = None,
         extra_check: Callable[[Config], None] | None = None, previous: Config | None = None) -> Config:
    """Read DIR/walswitch.conf, then DIR/postgresql.conf and DIR/postgresql.auto.conf if present, then
    apply overrides; validate everything.

    ``previous``: a reload (SIGHUP).  As PostgreSQL's ProcessConfigFile, a syntax error or an unknown
    name still raises (no changes are applied), but a bad value only keeps that setting's previous value
    and is listed in ``errors`` (the other changes apply).  Without it (server start) any error raises.
    """
    path = os.path.join(datadir, CONF_NAME)
    cfg = Config({s.name: s.default for s in SETTINGS.values()}, {})

    def assign(name: str, raw: str, where: str, line: int) -> None:
        try:
            cfg.values[name] = convert(SETTINGS[name], raw)
        except ConfigError as e:
            if previous is None:
                raise ConfigError(f'{e} in file "{where}" line {line}') from None
            cfg.errors.append(f'{e} in file "{where}" line {line}')
            cfg.error_file = where
            cfg.values[name] = previous.values.get(name, SETTINGS[name].default)
            if name in previous.sources:
                cfg.sources[name] = previous.sources[name]
            return
        cfg.sources[name] = f"{where}:{line}"

    for name, (raw, line) in parse_file(path).items():
        if name not in SETTINGS:
            raise ConfigError(f'unrecognized configuration parameter "{name}" in file "{path}" line {line}')
        assign(name, raw, path, line)
    # As PostgreSQL reads postgresql.auto.conf after its main file: pg_basebackup -R writes the standby's
    # primary_conninfo there.  PostgreSQL's settings that walswitch does not have are skipped (the file
    # may come from a PostgreSQL data directory) and listed in ``skipped``; a name PostgreSQL does not
    # know either is an error naming file and line, as PostgreSQL's.
    for auto in (os.path.join(datadir, n) for n in PG_CONF_NAMES):
        if not os.path.exists(auto):
            continue
        skipped: list[str] = []
        for name, (raw, line) in parse_file(auto).items():
            if name not in SETTINGS:
                if name in PG_SETTING_CONTEXT or is_custom_name(name):
                    skipped.append(name)
                    continue
                raise ConfigError(f'unrecognized configuration parameter "{name}" in file "{auto}" line {line}')
            assign(name, raw, auto, line)
        if skipped:
            cfg.skipped.append((auto, skipped))
    for name, raw in overrides or []:
        if name not in SETTINGS:
            raise ConfigError(f'unrecognized configuration parameter "{name}"')
        cfg.values[name] = convert(SETTINGS[name], raw)
        cfg.sources[name] = "command line"
    if extra_check:
        extra_check(cfg)
    return cfg


def error_file(e: ConfigError, datadir: str) -> str:
    """The file a load error names (the main settings file when it names none)."""
    m = re.search(r'file "([^"]+)"', str(e))
    return m.group(1) if m else os.path.join(datadir, CONF_NAME)


def listen_host(cfg: Config) -> str:
    """The single address we bind (loopback unless told otherwise)."""
    addr = cfg["listen_addresses"].split(",")[0].strip()
    if addr in ("localhost", ""):
        return "127.0.0.1"
    if addr == "*":
        return "0.0.0.0"
    return addr
