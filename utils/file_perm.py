"""Modes of the data directory and its files, as PostgreSQL's common/file_perm.c and checkDataDir.

Every server process and the commands that create a data directory (`walswitch init`, `walswitch
basebackup`) run with umask 077, so directories are created 0700 and files 0600 whatever the caller's
umask; a server refuses to start in a data directory that group or others may write, or read beyond
0750 (PostgreSQL allows group read with initdb -g; we never create one, but accept it as it does).
"""
from __future__ import annotations

import os
import stat

UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
_GROUP_MASK = stat.S_IWGRP | stat.S_IRWXO      # PostgreSQL's PG_MODE_MASK_GROUP (0027)


class DataDirModeError(RuntimeError):
    """The data directory's mode is too open; str() is PostgreSQL's message and DETAIL."""


def restrict_umask() -> None:
    os.umask(UMASK)


def check_data_dir_mode(datadir: str) -> None:
    mode = os.stat(datadir).st_mode
    if mode & _GROUP_MASK:
        raise DataDirModeError(f'data directory "{datadir}" has invalid permissions\n'
                               "DETAIL:  Permissions should be u=rwx (0700) or u=rwx,g=rx (0750).")
