"""What BASE_BACKUP writes: PostgreSQL 15's COPY stream of archives, the tar format, the backup manifest.

* ``CopyStream`` is basebackup_copy.c's "copystream" sink: one CopyOutResponse,
  then CopyData messages whose first byte says what follows: ``n`` a new archive
  (archive name, tablespace path, both NUL-terminated), ``d`` archive or manifest
  bytes, ``p`` a progress report (int64 bytes done, at most once a second after
  64 kB, and at the end of every archive), ``m`` the manifest begins; CopyDone
  ends it.  ``MAX_RATE`` throttles it (kB/s, as basebackup_throttle.c).
* ``TarWriter`` writes one ustar archive into it: 512-byte headers (names of
  at most 99 bytes, as PostgreSQL's tarCreateHeader), contents padded to 512,
  and exactly two zero blocks at the end: pg_basebackup's tar parser refuses a
  longer trailer, so Python's tarfile (which pads to 10 kB) writes headers only.
* ``Manifest`` is backup_manifest.c's JSON: one line per file (path, size,
  mtime, checksum of the bytes sent), the WAL range, and a SHA-256 of all of it
  up to the checksum line, so that ``pg_verifybackup`` accepts it.

The walsender's output buffer is flushed whenever it holds a megabyte, so a
backup never sits in memory.  Nothing here reads the data directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tarfile
import time
from typing import Any, BinaryIO, Protocol

import google_crc32c

from libpq import protocol as P
from xlog.lsn import format_lsn

COPY_CHUNK = 64 * 1024
TAR_BLOCK = 512
TAR_NAME_MAX = 99                       # tarCreateHeader's limit (the name field, NUL-terminated)
PROGRESS_REPORT_BYTE_INTERVAL = 65536   # basebackup_copy.c
PROGRESS_REPORT_SECONDS = 1.0
THROTTLING_FREQUENCY = 8                # basebackup_throttle.c: samples per second
FLUSH_AT = 1 << 20


class StreamHost(Protocol):
    """What the stream needs of the walsender (walsender/walsender.py's WalSender)."""
    out: bytearray
    shutdown_requested: bool

    def queue(self, data: bytes) -> None: ...
    def flush_all(self) -> None: ...
    def check_postmaster(self) -> None: ...


class CopyStream:
    def __init__(self, ws: StreamHost, max_rate_kb: int = 0):
        self.ws = ws
        self.bytes_done = 0                 # archive bytes sent (state->bytes_done)
        self.checked_at = 0                 # bytes_done at the last look at the clock
        self.last_report = time.monotonic()
        self.rate = max_rate_kb * 1024      # bytes per second; 0: unthrottled
        self.sample = self.rate // THROTTLING_FREQUENCY
        self.throttled = 0                  # bytes since the last throttling point
        self.throttle_at = time.monotonic()

    def begin(self) -> None:
        self.ws.queue(P.copy_out_response(0))

    def begin_archive(self, name: str, path: str = "") -> None:
        self.ws.queue(P.copy_data(b"n" + P.cstr(name) + P.cstr(path)))

    def archive_data(self, data: bytes | memoryview) -> None:
        for i in range(0, len(data), COPY_CHUNK):
            chunk = data[i:i + COPY_CHUNK]
            self.ws.queue(P.copy_data(b"d" + bytes(chunk)))
            self.bytes_done += len(chunk)
            self._maybe_report()
            self._throttle(len(chunk))
            if len(self.ws.out) >= FLUSH_AT:
                self.ws.flush_all()

    def end_archive(self) -> None:
        """basebackup_copy.c forces a report here, so the client sees the final count."""
        self._report()

    def begin_manifest(self) -> None:
        self.ws.queue(P.copy_data(b"m"))

    def manifest_data(self, data: bytes) -> None:
        for i in range(0, len(data), COPY_CHUNK):
            self.ws.queue(P.copy_data(b"d" + data[i:i + COPY_CHUNK]))

    def end(self) -> None:
        self.ws.queue(P.copy_done())

    def _report(self) -> None:
        self.checked_at = self.bytes_done
        self.last_report = time.monotonic()
        self.ws.queue(P.copy_data(b"p" + struct.pack("!q", self.bytes_done)))

    def _maybe_report(self) -> None:
        if self.bytes_done - self.checked_at < PROGRESS_REPORT_BYTE_INTERVAL:
            return
        self.checked_at = self.bytes_done
        now = time.monotonic()
        if now - self.last_report >= PROGRESS_REPORT_SECONDS:
            self._report()

    def _throttle(self, n: int) -> None:
        """Sleep whenever a sample's worth of bytes went out faster than MAX_RATE allows."""
        if not self.rate:
            return
        self.throttled += n
        if self.throttled < self.sample:
            return
        self.ws.flush_all()                 # the rate applies to the wire, not to our buffer
        due = self.throttle_at + self.throttled / self.rate
        while (left := due - time.monotonic()) > 0:
            self.ws.check_postmaster()
            if self.ws.shutdown_requested:
                raise P.SQLError("57P01", "terminating connection due to administrator command")
            time.sleep(min(left, 0.1))
        self.throttled = 0
        self.throttle_at = max(due, time.monotonic() - 1.0 / THROTTLING_FREQUENCY)


# ---------------------------------------------------------------- checksums of the manifest
class _Crc32c:
    name = "CRC32C"

    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: bytes | memoryview) -> None:
        self.crc = google_crc32c.extend(self.crc, bytes(data))

    def hexdigest(self) -> str:
        # pg_checksum_final copies the uint32 as it lies in memory: little-endian bytes, in hex.
        return struct.pack("<I", self.crc).hex()


class _NoChecksum:
    name = "NONE"

    def update(self, data: bytes | memoryview) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


class _Sha:
    def __init__(self, name: str):
        self.name = name
        self.h = hashlib.new(name.lower())

    def update(self, data: bytes | memoryview) -> None:
        self.h.update(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


CHECKSUM_TYPES = ("NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512")   # pg_checksum_parse_type


def new_checksum(kind: str) -> Any:
    if kind == "NONE":
        return _NoChecksum()
    if kind == "CRC32C":
        return _Crc32c()
    return _Sha(kind)


class Manifest:
    """backup_manifest, built as the archive is written (AddFileToBackupManifest / SendBackupManifest)."""

    def __init__(self, checksum_type: str = "CRC32C", force_encode: bool = False):
        self.checksum_type = checksum_type
        self.force_encode = force_encode
        self.lines: list[str] = []

    def checksum(self) -> Any:
        return new_checksum(self.checksum_type)

    def add_file(self, path: str, size: int, mtime: float, checksum: Any) -> None:
        raw = path.encode("utf-8", "surrogateescape")
        try:
            if self.force_encode:
                raise UnicodeDecodeError("utf-8", raw, 0, 0, "forced")
            raw.decode("utf-8")
            name = f'"Path": {json.dumps(path, ensure_ascii=False)}'
        except UnicodeDecodeError:
            name = f'"Encoded-Path": "{raw.hex()}"'
        when = time.strftime("%Y-%m-%d %H:%M:%S GMT", time.gmtime(int(mtime)))
        line = f'{{ {name}, "Size": {size}, "Last-Modified": "{when}"'
        if self.checksum_type != "NONE":
            line += f', "Checksum-Algorithm": "{self.checksum_type}", "Checksum": "{checksum.hexdigest()}"'
        self.lines.append(line + " }")

    def finish(self, start_lsn: int, start_tli: int, end_lsn: int, end_tli: int) -> bytes:
        """The whole manifest; the WAL range is one timeline (backups run on a primary only)."""
        _ = end_tli
        body = ('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n' + ",\n".join(self.lines) + "\n],\n"
                '"WAL-Ranges": [\n'
                f'{{ "Timeline": {start_tli}, "Start-LSN": "{format_lsn(start_lsn)}", '
                f'"End-LSN": "{format_lsn(end_lsn)}" }}\n'
                "],\n").encode("utf-8")
        return body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode()


# ---------------------------------------------------------------- tar
class TarWriter:
    """One ustar archive written into a CopyStream, every regular file also entered in the manifest."""

    def __init__(self, stream: CopyStream, manifest: Manifest | None):
        self.stream = stream
        self.manifest = manifest
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.size = 0                    # archive bytes written

    def _header(self, name: str, kind: bytes, size: int, mode: int, mtime: float, linkname: str = "") -> None:
        if len(name.encode("utf-8", "surrogateescape")) > TAR_NAME_MAX:
            raise P.SQLError("XX000", f'file name too long for tar format: "{name}"')
        ti = tarfile.TarInfo(name)
        ti.type, ti.size, ti.mode, ti.mtime = kind, size, mode & 0o7777, int(mtime)
        ti.uid, ti.gid, ti.linkname = self.uid, self.gid, linkname
        self._write(ti.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="surrogateescape"))

    def _write(self, data: bytes | memoryview) -> None:
        self.stream.archive_data(data)
        self.size += len(data)

    def add_dir(self, name: str, mode: int = 0o700, mtime: float | None = None) -> None:
        self._header(name, tarfile.DIRTYPE, 0, mode, time.time() if mtime is None else mtime)

    def add_symlink(self, name: str, target: str, mtime: float) -> None:
        self._header(name, tarfile.SYMTYPE, 0, 0o777, mtime, target)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600, mtime: float | None = None,
                  in_manifest: bool = True) -> None:
        mtime = time.time() if mtime is None else mtime
        self._header(name, tarfile.REGTYPE, len(data), mode, mtime)
        self._write(data)
        self._pad(len(data))
        if self.manifest is not None and in_manifest:
            ck = self.manifest.checksum()
            ck.update(data)
            self.manifest.add_file(name, len(data), mtime, ck)

    def add_file(self, name: str, f: BinaryIO, size: int, mode: int, mtime: float, in_manifest: bool = True) -> None:
        """Exactly ``size`` bytes of ``f``: a file that shrank meanwhile is padded with zeros, one that grew
        is cut (PostgreSQL's sendFile; WAL replay makes either right)."""
        self._header(name, tarfile.REGTYPE, size, mode, mtime)
        ck = self.manifest.checksum() if self.manifest is not None and in_manifest else None
        left = size
        while left > 0:
            data = f.read(min(left, COPY_CHUNK * 4)) or bytes(min(left, COPY_CHUNK * 4))
            self._write(data)
            if ck is not None:
                ck.update(data)
            left -= len(data)
        self._pad(size)
        if ck is not None and self.manifest is not None:
            self.manifest.add_file(name, size, mtime, ck)

    def _pad(self, size: int) -> None:
        if size % TAR_BLOCK:
            self._write(bytes(TAR_BLOCK - size % TAR_BLOCK))

    def finish(self) -> None:
        self._write(bytes(2 * TAR_BLOCK))


def entry_size(size: int) -> int:
    """Bytes a member takes in the archive: header plus contents padded to a block."""
    return TAR_BLOCK + (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK

