"""Shared pieces of the benchmarks: temporary servers (walswitch and PostgreSQL 15), timing, medians.

Benchmarks measure; they never assert.  Each figure is the median of several
runs, and each walswitch figure is quoted as a ratio against PostgreSQL 15
measured in the same run on the same machine.

The servers live in ``walswitch/compare/servers.py`` (``walswitch compare``
starts them the same way); this module re-exports them for the benchmarks.
"""
from __future__ import annotations

from pathlib import Path

from walswitch.compare.servers import (LEFTOVERS, PGBIN, WALSWITCH, BenchError, Server, _append_conf,  # noqa: F401
                                       as_postgres, copytree_as, format_lsn, free_port, give_to_postgres,
                                       install_signal_handlers, median, now, parse_lsn, percentile, pg_basebackup,
                                       pg_init, pg_primary, pg_server, pg_start, pg_stop, psql, ratio, tail, tempdir,
                                       wait_for, walswitch_primary, walswitch_server, ws, ws_basebackup, ws_init,
                                       ws_start, ws_status, ws_stop)

ROOT = Path(__file__).resolve().parent.parent
