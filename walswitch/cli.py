"""``walswitch``: the command line (init, start, stop, status, reload, logrotate, promote, waldump, dump, basebackup,
compare, soak).

Every error a user can cause is one line on stderr, ``walswitch <cmd>: error: ...``,
and a non-zero exit; never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

from utils import file_perm

PROG = "walswitch"


class CliError(Exception):
    pass


def fail(cmd: str, msg: str, code: int = 1) -> int:
    print(f"{PROG} {cmd}: error: {msg}", file=sys.stderr)
    return code


def check_datadir(datadir: str | None, cmd: str) -> str:
    if not datadir:
        datadir = os.environ.get("WALSWITCH_DATA") or os.environ.get("PGDATA")
    if not datadir:
        raise CliError("no data directory specified (use -D or set PGDATA)")
    if not os.path.isdir(datadir):
        raise CliError(f'data directory "{datadir}" does not exist')
    return os.path.abspath(datadir)


# ---------------------------------------------------------------- init
def cmd_init(args: argparse.Namespace) -> int:
    from walswitch.initdb import InitError, initdb
    try:
        password = None
        if args.pwfile:
            with open(args.pwfile, encoding="utf-8") as f:
                password = f.readline().rstrip("\n")
        elif args.pwprompt:
            import getpass
            password = getpass.getpass("Enter new superuser password: ")
            if getpass.getpass("Enter it again: ") != password:
                raise CliError("Passwords didn't match.")
        auth_host = args.auth_host or args.auth or "trust"
        auth_local = args.auth_local or args.auth or "trust"
        if auth_host in ("md5", "scram-sha-256", "password") and password is None:
            raise CliError(f'must specify a password for the superuser to enable {auth_host} authentication')
        initdb(args.datadir, wal_segsize_mb=args.wal_segsize, port=args.port, superuser=args.username,
               password=password, auth_host=auth_host, auth_local=auth_local)
        if "trust" in (auth_host, auth_local):
            print(f'{PROG} init: warning: enabling "trust" authentication for local connections\n'
                  f'{PROG} init: hint: You can change this by editing pg_hba.conf or using the option -A, '
                  'or --auth-local and --auth-host, the next time you run init.', file=sys.stderr)
    except OSError as e:
        raise CliError(f'could not read password from file "{args.pwfile}": {e.strerror}') from None
    except InitError as e:
        raise CliError(str(e)) from None
    if args.ssl:
        from walswitch.sslcerts import make_server_certificates
        hosts = [h.strip() for h in args.ssl_hosts.split(",") if h.strip()] if args.ssl_hosts else None
        make_server_certificates(args.datadir, hosts)
        with open(os.path.join(args.datadir, "walswitch.conf"), "a", encoding="utf-8") as f:
            f.write("ssl = on\n")
    print(f'Success. You can now start the database server using:\n\n    {PROG} start -D {args.datadir}\n')
    return 0


# ---------------------------------------------------------------- start
def cmd_start(args: argparse.Namespace) -> int:
    from utils import config as cfgmod
    datadir = check_datadir(args.datadir, "start")
    try:
        overrides = [cfgmod.parse_override(c) for c in args.c or []]
        if args.port is not None:
            overrides.append(("port", str(args.port)))
        cfg = cfgmod.load(datadir, overrides)
    except cfgmod.ConfigError as e:
        raise CliError(str(e)) from None
    from libpq.hba import HbaError, load_hba
    try:
        load_hba(os.path.join(datadir, "pg_hba.conf"))
    except HbaError as e:
        raise CliError(f"{e}; could not load pg_hba.conf") from None
    from xlog.control import ControlFileError, read_control
    try:
        read_control(datadir)
    except ControlFileError as e:
        raise CliError(str(e)) from None
    from postmaster import pidfile
    info = pidfile.read(datadir)
    if pidfile.is_running(info):
        raise CliError(f'lock file "postmaster.pid" already exists: is another postmaster '
                       f'(PID {info.pid}) running in data directory "{datadir}"?')
    if args.detach:
        return start_detached(datadir, args, cfg)
    code = run_postmaster(datadir, cfg, detached=bool(os.environ.get("WALSWITCH_DETACHED")))
    # Teardown is done (shared memory removed, lock file gone, log drained): leave at once, as
    # the children do.  A normal interpreter exit joins the log queue's feeder thread, which
    # blocks forever when a SIGKILLed child left the queue's shared write lock taken.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_postmaster(datadir: str, cfg, detached: bool) -> int:
    from postmaster.pidfile import LockFileError
    from postmaster.postmaster import Postmaster, StartupFailure
    from utils import elog
    elog.setup(datadir, cfg["log_min_messages"], to_stderr=not detached)
    pm = Postmaster(datadir, cfg, detached=detached)
    try:
        return pm.run()
    except (StartupFailure, LockFileError) as e:
        elog.logger().critical("%s", e)
        elog.shutdown()
        if detached:
            # In the foreground the FATAL line above already went to stderr.
            print(f"{PROG} start: error: {e}", file=sys.stderr)
        if pm.shared is not None:
            pm.shared.destroy()
        return 1
    finally:
        elog.shutdown()


def start_detached(datadir: str, args: argparse.Namespace, cfg) -> int:
    """Start the postmaster in the background; return once it accepts connections."""
    from postmaster import pidfile
    os.makedirs(os.path.join(datadir, "log"), exist_ok=True)
    out_path = os.path.join(datadir, "log", "postmaster.out")
    log_offset = _server_log_size(datadir)
    start_offset = os.path.getsize(out_path) if os.path.exists(out_path) else 0
    pid = fork_postmaster(datadir, cfg, out_path)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        code = exit_code(pid)
        if code is not None:
            # The first FATAL of this start in the server log is the cause (a failed startup
            # process logs only there); else what the postmaster printed before its log existed.
            reason = (first_fatal_line(_server_log_lines(datadir, log_offset))
                      or last_error_line(out_path, start_offset)
                      or f"postmaster exited with exit code {code}")
            raise CliError(f"could not start server: {reason}")
        info = pidfile.read(datadir)
        if info is not None and info.pid == pid and info.status == "ready":
            print("server started")
            return 0
        if info is not None and info.pid == pid and info.status == "standby" and args.no_wait_ready:
            print("server started")
            return 0
        time.sleep(0.05)
    raise CliError(f"server did not start in time ({args.timeout} s); see {out_path}")


def _server_log_size(datadir: str) -> int:
    """Bytes in the server log, rotated files included (utils.elog.log_files: they only grow)."""
    from utils.elog import log_files
    total = 0
    for p in log_files(datadir):
        with contextlib.suppress(OSError):
            total += os.path.getsize(p)
    return total


def _server_log_lines(datadir: str, offset: int) -> list[str]:
    """The server log's lines after ``offset`` bytes of ``_server_log_size``: a rotation since
    (log_rotation_size reached at start) does not hide them."""
    from utils.elog import log_files
    data = b""
    for p in log_files(datadir):
        with contextlib.suppress(OSError), open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset >= size:
                offset -= size
                continue
            f.seek(offset)
            offset = 0
            data += f.read()
    return data.decode("utf-8", "replace").splitlines()


def fork_postmaster(datadir: str, cfg, out_path: str) -> int:
    """The postmaster in a forked child of this command: its own session, stdin from /dev/null,
    stdout and stderr appended to out_path, no other descriptor of ours; returns its pid.

    A fork, not a new interpreter running ``walswitch start`` again: the settings are loaded
    and checked already, and the second interpreter's start, imports and checks (~70 ms)
    delayed every server start (a standby's catch-up, bench.catchup, included).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pid = os.fork()
    if pid:
        os.close(out)
        return pid
    code = 1
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        # Whoever ran us may wait for EOF on our stdout or stderr: keep nothing of theirs open.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.environ["WALSWITCH_DETACHED"] = "1"
        code = run_postmaster(datadir, cfg, detached=True)
    except BaseException as e:  # noqa: BLE001 - reported in postmaster.out; never return into the command
        print(f"{PROG} start: error: {e}", file=sys.stderr)
    finally:
        # As the foreground postmaster: leave at once (see cmd_start).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_code(pid: int) -> int | None:
    """The forked postmaster's exit code if it has exited, else None."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _lines_from(path: str, offset: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def first_fatal_line(lines: list[str]) -> str | None:
    for line in lines:
        for marker in ("FATAL:  ", "PANIC:  "):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return None


def last_error_line(path: str, offset: int) -> str | None:
    lines = _lines_from(path, offset)
    for line in reversed(lines):
        for marker in ("FATAL:  ", "error: ", "PANIC:  "):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return lines[-1].strip() if lines else None


# ---------------------------------------------------------------- stop
def cmd_stop(args: argparse.Namespace) -> int:
    from postmaster import pidfile
    datadir = check_datadir(args.datadir, "stop")
    info = pidfile.read(datadir)
    if info is None or not pidfile.is_running(info):
        raise CliError(f'PID file "{pidfile.path(datadir)}" does not exist; is server running?')
    sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[args.mode]
    os.kill(info.pid, sig)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        # The lock file goes first; the process is gone a moment later (log queue drained).
        if not _pid_alive(info.pid):
            print("server stopped")
            return 0
        time.sleep(0.05)
    raise CliError(f"server does not shut down (PID {info.pid})")


def _pid_alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from walswitch.status import collect
    datadir = check_datadir(args.datadir, "status")
    st = collect(datadir)
    if args.json:
        print(json.dumps(st, indent=None if args.compact else 2, sort_keys=True))
    else:
        if st["postmaster_pid"] is None:
            print("no server running")
        else:
            for k in sorted(st):
                print(f"{k}: {st[k]}")
    return 0 if st["postmaster_pid"] is not None else 3


# ---------------------------------------------------------------- reload
def cmd_reload(args: argparse.Namespace) -> int:
    """pg_ctl reload: SIGHUP to the postmaster, which re-reads the settings and pg_hba.conf."""
    from postmaster import pidfile
    datadir = check_datadir(args.datadir, "reload")
    info = pidfile.read(datadir)
    if not pidfile.is_running(info):
        raise CliError(f'PID file "{pidfile.path(datadir)}" does not exist; is server running?')
    os.kill(info.pid, signal.SIGHUP)
    print("server signaled")
    return 0


# ---------------------------------------------------------------- logrotate
def cmd_logrotate(args: argparse.Namespace) -> int:
    """pg_ctl logrotate: a ``logrotate`` file in the data directory and SIGUSR1 to the postmaster,
    which rotates log/walswitch.log (postmaster/syslogger.py) and removes the file."""
    from postmaster import pidfile
    from postmaster.syslogger import signal_file
    datadir = check_datadir(args.datadir, "logrotate")
    info = pidfile.read(datadir)
    if not pidfile.is_running(info):
        raise CliError(f'PID file "{pidfile.path(datadir)}" does not exist; is server running?')
    path = signal_file(datadir)
    try:
        with open(path, "w"):
            pass
    except OSError as e:
        raise CliError(f'could not create log rotation signal file "{path}": {e.strerror}') from None
    try:
        os.kill(info.pid, signal.SIGUSR1)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise CliError(f"could not send log rotation signal (PID: {info.pid}): {e.strerror}") from None
    print("server signaled to rotate log file")
    return 0


# ---------------------------------------------------------------- promote
def cmd_promote(args: argparse.Namespace) -> int:
    from postmaster import pidfile
    datadir = check_datadir(args.datadir, "promote")
    info = pidfile.read(datadir)
    if not pidfile.is_running(info):
        raise CliError(f'PID file "{pidfile.path(datadir)}" does not exist; is server running?')
    if not os.path.exists(os.path.join(datadir, "standby.signal")):
        raise CliError("cannot promote server; server is not in standby mode")
    path = os.path.join(datadir, "promote")
    with open(path, "w") as f:
        f.write("")
    os.kill(info.pid, signal.SIGUSR1)
    if args.no_wait:
        print("server promoting")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not os.path.exists(os.path.join(datadir, "standby.signal")):
            print("server promoted")
            return 0
        time.sleep(0.05)
    raise CliError("server did not promote in time")


# ---------------------------------------------------------------- waldump / dump
def cmd_waldump(args: argparse.Namespace) -> int:
    from xlog import waldump
    return waldump.main(args.args)


def cmd_dump(args: argparse.Namespace) -> int:
    from storage.kvstore import dump
    from xlog.lsn import format_lsn
    datadir = check_datadir(args.datadir, "dump")
    rows, lsn = dump(datadir)
    for k, v in rows:
        print(f"{k}\t{v}")
    print(f"-- applied up to {format_lsn(lsn)}", file=sys.stderr if args.quiet_lsn else sys.stdout)
    return 0


def cmd_basebackup(args: argparse.Namespace) -> int:
    try:
        from walswitch.basebackup import BaseBackupError, basebackup
    except ImportError:
        raise CliError("basebackup is not available in this build") from None
    try:
        basebackup(args.dbname, args.datadir, write_recovery_conf=args.write_recovery_conf)
    except BaseBackupError as e:
        raise CliError(str(e)) from None
    return 0


# ---------------------------------------------------------------- main
_AUTH_METHODS = ("trust", "reject", "scram-sha-256", "md5", "password")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="A PostgreSQL-style standby server in Python.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("init", help="create a new primary data directory")
    s.add_argument("-D", "--pgdata", dest="datadir", required=True)
    s.add_argument("--wal-segsize", type=int, default=16, help="WAL segment size in MB (power of two, 1..1024)")
    s.add_argument("-p", "--port", type=int, default=None, help="port written to walswitch.conf")
    s.add_argument("-U", "--username", default=None, help="bootstrap superuser (default: the OS user; postgres for root)")
    s.add_argument("--pwfile", default=None, help="read the superuser's password from this file's first line")
    s.add_argument("-W", "--pwprompt", action="store_true", help="prompt for the superuser's password")
    s.add_argument("-A", "--auth", default=None, choices=_AUTH_METHODS)
    s.add_argument("--auth-host", default=None, choices=_AUTH_METHODS)
    s.add_argument("--auth-local", default=None, choices=_AUTH_METHODS)
    s.add_argument("--ssl", action="store_true",
                   help="make a CA and a server certificate (root.crt, server.crt, server.key) and set ssl = on")
    s.add_argument("--ssl-hosts", metavar="NAMES", default=None,
                   help="comma-separated host names and addresses for the server certificate "
                        "(default: localhost, 127.0.0.1, ::1 and this host's name)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("start", help="run the server (foreground unless --detach)")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.add_argument("-c", action="append", metavar="NAME=VALUE")
    s.add_argument("-p", "--port", type=int)
    s.add_argument("--detach", action="store_true")
    s.add_argument("--no-wait-ready", action="store_true",
                   help="with --detach, return once a standby is recovering, before it is consistent")
    s.add_argument("-t", "--timeout", type=float, default=60.0)
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("stop", help="stop a running server")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.add_argument("-m", "--mode", choices=("smart", "fast", "immediate"), default="fast")
    s.add_argument("-t", "--timeout", type=float, default=60.0)
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser("status", help="show the server's state")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.add_argument("--json", action="store_true")
    s.add_argument("--compact", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("reload", help="re-read the configuration files and pg_hba.conf (SIGHUP)")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.set_defaults(func=cmd_reload)

    s = sub.add_parser("logrotate", help="rotate the server log file (log/walswitch.log), as pg_ctl logrotate")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.set_defaults(func=cmd_logrotate)

    s = sub.add_parser("promote", help="promote a standby")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.add_argument("-W", "--no-wait", action="store_true")
    s.add_argument("-t", "--timeout", type=float, default=60.0)
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser("waldump", help="print WAL records as pg_waldump does (--stats[=record]: the summary)",
                       add_help=False)
    s.add_argument("args", nargs=argparse.REMAINDER, help="PATH... [--stats[=record]] (see waldump --help)")
    s.set_defaults(func=cmd_waldump)

    s = sub.add_parser("dump", help="print the key/value content and the LSN it reflects")
    s.add_argument("-D", "--pgdata", dest="datadir")
    s.add_argument("--quiet-lsn", action="store_true", help="print the LSN line on stderr")
    s.set_defaults(func=cmd_dump)

    s = sub.add_parser("basebackup", help="take a base backup from a running primary")
    s.add_argument("-d", "--dbname", required=True, help="connection string")
    s.add_argument("-D", "--pgdata", dest="datadir", required=True)
    s.add_argument("-R", "--write-recovery-conf", action="store_true")
    s.set_defaults(func=cmd_basebackup)

    s = sub.add_parser("compare", help="run scenarios on every approach (and PostgreSQL); table, JSON, PNG",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="scenario steps:\n" + _vocabulary())
    s.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario TOML files (scenarios/*.toml)")
    s.add_argument("--approaches", metavar="LIST", help="comma-separated (default: all three)")
    s.add_argument("--postgres", action="store_true", help="also run it on a real PostgreSQL 15 pair")
    s.add_argument("--runs", type=int, default=1, help="runs per system; figures are medians (default 1)")
    s.add_argument("--out", default="compare-results", help="directory for JSON and PNG (default compare-results)")
    s.add_argument("--json", action="store_true", help="print the JSON document on stdout (tables go to stderr)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("soak", help="random fault schedules on every approach, invariants checked after each")
    s.add_argument("--schedules", type=int, default=20, help="schedules per approach (default 20)")
    s.add_argument("--seed", type=int, default=None, help="seed of the first schedule (default: random)")
    s.add_argument("--approaches", metavar="LIST", help="comma-separated (default: all three)")
    s.add_argument("-c", dest="settings", action="append", metavar="NAME=VALUE",
                   help="a standby setting for every schedule (e.g. concurrent_guard=off)")
    s.add_argument("--out", default="soak-results", help="directory for the JSON summary and replay files")
    s.add_argument("--stop-at-first", action="store_true", help="stop at the first violation")
    s.set_defaults(func=cmd_soak)
    return p


def _vocabulary() -> str:
    from walswitch.compare.scenario import VOCABULARY
    return VOCABULARY


def cmd_compare(args: argparse.Namespace) -> int:
    from walswitch.compare.command import main as compare_main
    return compare_main(args)


def cmd_soak(args: argparse.Namespace) -> int:
    from walswitch.compare.soak import main as soak_main
    return soak_main(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["waldump"]:
        # Straight to the tool: building the whole parser imports the scenario vocabulary
        # (walswitch.compare), a tenth of waldump's run time on a few segments.
        from xlog import waldump
        return waldump.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    # Whatever this command creates (a data directory, its files, a server's files) is for its owner only.
    file_perm.restrict_umask()
    try:
        return args.func(args)
    except CliError as e:
        return fail(args.cmd, str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
