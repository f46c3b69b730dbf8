"""PostgreSQL 15 WAL in pure Python: framing, records, reading, writing, and their files.

Modules: lsn (positions and file names), constants (PG15's numbers),
errors (WalError), page (page headers and their checks), record
(build/decode records, payload codecs), writer (WalWriter), reader
(WalReader), control (our control file), history (timeline history
files), archive_status (.ready/.done), rmgrdesc and waldump
(`walswitch waldump`, also `python -m xlog.waldump`). Import from the
modules; this package file holds no state and imports nothing.
"""
