"""restore_command, as PostgreSQL runs it (RestoreArchivedFile).

The command runs through ``/bin/sh -c`` in the data directory with ``%p``
(where to put the file: a temporary name in pg_wal, relative to the data
directory), ``%f`` (the file wanted), ``%r`` (the oldest file still needed:
the last restartpoint's segment) and ``%%``.  On success the file is renamed
into pg_wal under its real name (fsync of file and directory first), so that
later reads, walsenders and restarts find it there.

Outcomes, as PostgreSQL judges them:

* exit 0 and a file of the right size: restored;
* exit 0 but a file of the wrong size: not used (PostgreSQL is FATAL for a
  file larger than a segment; we never use either and log why);
* any other non-zero exit code: "not in the archive" (logged at DEBUG);
* death by a signal, or exit 126, 127 or above 128 (the shell's way of
  saying the command was not executable, not found, or signalled): FATAL,
  the startup process exits and the server stops.

``restore_command_timeout`` (ours; 0 = off, PostgreSQL has none) kills a
command that hangs and treats the attempt as a failure.  A shutdown request
kills the running command's process group at once.

The wait for the command is woken by its exit (a pidfd), not by polling:
``Popen.wait(timeout)`` sleeps in doubling steps (1, 2, 4 ms ...), so a
``cp`` of a segment that takes 2.5 ms was seen done at 3.5 to 7 ms, once per
segment of an archive catch-up.  ``should_stop`` and the timeout are still
checked every ``STOP_POLL`` seconds while the command runs.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from utils import elog

log = elog.logger()

STOP_POLL = 0.05    # seconds between checks of should_stop and the timeout while the command runs


class RestoreFatal(RuntimeError):
    """restore_command died by a signal or could not run: recovery cannot go on."""


@dataclass
class RestoreResult:
    ok: bool
    fname: str
    exit_code: int | None      # None: killed by a signal / timed out
    seconds: float
    size: int = 0
    reason: str = ""
    path: str = ""             # where the restored file is (pg_wal, or a temporary name)


def expand(command: str, path: str, fname: str, last_restartpoint: str) -> str:
    out = []
    i = 0
    while i < len(command):
        c = command[i]
        if c == "%" and i + 1 < len(command):
            n = command[i + 1]
            rep = {"p": path, "f": fname, "r": last_restartpoint, "%": "%"}.get(n)
            if rep is not None:
                out.append(rep)
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def describe_status(code: int) -> str:
    if code < 0:
        sig = -code
        return f"child process was terminated by signal {sig}: {signal.strsignal(sig)}"
    return f"child process exited with exit code {code}"


def fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_file(datadir: str, command: str, fname: str, expected_size: int | None,
                 last_restartpoint: str, *, timeout: float = 0.0,
                 should_stop: Callable[[], bool] = lambda: False,
                 on_child: Callable[[int | None], None] = lambda pid: None,
                 install: bool = True, meanwhile: Callable[[], None] | None = None) -> RestoreResult:
    """Run restore_command for ``fname``; on success the file is in pg_wal under its name.

    ``should_stop`` is polled while the command runs (shutdown, postmaster
    death); ``on_child`` learns the command's pid (for the injection points
    and for tests that kill it).  ``meanwhile`` is called once the command
    has started, before waiting for it (the startup applies its last batch
    of replayed commits while the command copies); if it raises, the command
    is killed.  ``seconds`` counts from the command's start to when it was
    seen done, so it includes ``meanwhile`` when that took longer.
    """
    pg_wal = os.path.join(datadir, "pg_wal")
    tmp_rel = os.path.join("pg_wal", f"RECOVERYXLOG.{os.getpid()}.{fname}")
    tmp_abs = os.path.join(datadir, tmp_rel)
    try:
        os.unlink(tmp_abs)
    except FileNotFoundError:
        pass
    cmd = expand(command, tmp_rel, fname, last_restartpoint)
    log.debug('executing restore command "%s"', cmd)
    t0 = time.monotonic()
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=datadir, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    on_child(proc.pid)
    pidfd = _open_pidfd(proc.pid)
    code: int | None = None
    timed_out = False
    try:
        if meanwhile is not None:
            _run_beside(proc, meanwhile, tmp_abs)
        while True:
            code = _wait_exit(proc, pidfd, STOP_POLL)
            if code is not None:
                break
            if should_stop():
                _kill_group(proc)
                raise InterruptedError("shutdown requested during restore_command")
            if timeout and time.monotonic() - t0 > timeout:
                _kill_group(proc)
                timed_out = True
                code = None
                break
    finally:
        on_child(None)
        if pidfd is not None:
            os.close(pidfd)
    seconds = time.monotonic() - t0
    if timed_out:
        _unlink(tmp_abs)
        log.info('could not restore file "%s" from archive: restore_command timed out after %.1f s', fname, seconds)
        return RestoreResult(False, fname, None, seconds, reason="timeout")
    assert code is not None
    if code != 0:
        _unlink(tmp_abs)
        if code < 0 or code in (126, 127) or code > 128:
            raise RestoreFatal(f'could not restore file "{fname}" from archive: {describe_status(code)}')
        log.debug('could not restore file "%s" from archive: %s', fname, describe_status(code))
        return RestoreResult(False, fname, code, seconds, reason="not found")
    try:
        size = os.stat(tmp_abs).st_size
    except FileNotFoundError:
        log.debug('could not restore file "%s" from archive: restore_command returned 0 but no file', fname)
        return RestoreResult(False, fname, 0, seconds, reason="no file")
    if expected_size is not None and size != expected_size:
        _unlink(tmp_abs)
        log.info('archive file "%s" has wrong size: %d instead of %d', fname, size, expected_size)
        return RestoreResult(False, fname, 0, seconds, size, reason="wrong size")
    fsync_path(tmp_abs)
    log.info('restored log file "%s" from archive', fname)
    if not install:
        # The caller decides whether and how the file goes into pg_wal.
        return RestoreResult(True, fname, 0, seconds, size, path=tmp_abs)
    os.replace(tmp_abs, os.path.join(pg_wal, fname))
    fsync_path(pg_wal, directory=True)
    return RestoreResult(True, fname, 0, seconds, size, path=os.path.join(pg_wal, fname))


def _run_beside(proc: subprocess.Popen, work: Callable[[], None], tmp_abs: str) -> None:
    """Run work while the command runs; if it fails, the command is killed and its file removed."""
    try:
        work()
    except BaseException:
        _kill_group(proc)
        _unlink(tmp_abs)
        raise


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the process exits; None where Linux has none (< 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait_exit(proc: subprocess.Popen, pidfd: int | None, timeout: float) -> int | None:
    """proc's exit code as soon as it exits, or None if it still runs after timeout seconds."""
    if pidfd is None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    if not select.select([pidfd], [], [], timeout)[0]:
        return None
    return proc.wait()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
