"""Create, attach to and remove a server's shared memory and semaphores.

The postmaster calls ``SharedState.create`` before it forks anything; children
inherit the mapping and the semaphore handles through fork and never attach
by name.  ``SharedState.attach`` (read-mostly) is for tools such as
``walswitch status`` and ``walswitch promote``.  ``SharedState.destroy``
unlinks everything; the crash-restart cycle destroys and recreates, because a
killed child may have left a mutex taken.
"""
from __future__ import annotations

import contextlib
import mmap
import struct
import time
from typing import Any

import posix_ipc

from shmem import layout, names
from shmem.sync import Latch, Mutex


class ShmemError(RuntimeError):
    pass


class Region:
    """One struct-laid-out region of the segment, guarded by a mutex."""

    def __init__(self, buf: mmap.mmap, offset: int, rl: layout.RegionLayout, mutex: Mutex):
        self.buf = buf
        self.base = offset
        self.layout = rl
        self.mutex = mutex
        # name -> (absolute offset, compiled struct): every hand-over reads and writes these,
        # and a compiled Struct skips the format-string cache lookup of struct.pack_into.
        self._fields = {name: (offset + off, struct.Struct(fmt)) for name, (off, fmt) in rl.offsets().items()}
        self.size = rl.struct.size
        self._locked = _Locked(self)

    def __contains__(self, name: str) -> bool:
        return name in self._fields

    def get(self, name: str) -> Any:
        """Unlocked read of one field (a hint; see layout.py)."""
        off, st = self._fields[name]
        value = st.unpack_from(self.buf, off)
        if not value:
            return None
        v = value[0]
        if isinstance(v, bytes):
            return v.rstrip(b"\x00").decode("utf-8", "replace")
        return v

    def set(self, **values: Any) -> None:
        """Unlocked write; the caller holds the mutex (or owns the field)."""
        buf, fields = self.buf, self._fields
        for name, v in values.items():
            off, st = fields[name]
            if isinstance(v, str):
                v = v.encode("utf-8")
            st.pack_into(buf, off, v)

    def locked(self) -> "_Locked":
        """``with region.locked() as r:`` holds the region's mutex."""
        return self._locked

    def read(self, *fields: str) -> dict[str, Any]:
        """Consistent snapshot of some (default all) fields under the mutex."""
        with self.mutex.held():
            return self.snapshot(*fields)

    def snapshot(self, *fields: str) -> dict[str, Any]:
        wanted = fields or tuple(n for n, f in self.layout.fields if not f.endswith("x"))
        return {n: self.get(n) for n in wanted}

    def update(self, **values: Any) -> None:
        with self.mutex.held():
            self.set(**values)

    def clear(self) -> None:
        self.buf[self.base:self.base + self.size] = bytes(self.size)


class _Locked:
    """The context manager ``Region.locked`` returns (one per region; it keeps no state of its own)."""

    __slots__ = ("region", "mutex")

    def __init__(self, region: Region) -> None:
        self.region = region
        self.mutex = region.mutex

    def __enter__(self) -> Region:
        self.mutex.acquire()
        return self.region

    def __exit__(self, *exc: object) -> None:
        self.mutex.release()


class SharedState:
    """A server's segment, its regions, region mutexes and process latches."""

    def __init__(self, datadir: str, shm: posix_ipc.SharedMemory, buf: mmap.mmap,
                 max_wal_senders: int, sems: dict[str, posix_ipc.Semaphore]):
        self.datadir = datadir
        self._shm = shm
        self.buf = buf
        self.max_wal_senders = max_wal_senders
        self._sems = sems
        self.regions: dict[str, Region] = {}
        off = layout.HEADER.size
        off = (off + 7) & ~7
        for rl in layout.SINGLE_REGIONS:
            self.regions[rl.name] = Region(buf, off, rl, Mutex(sems[f"lock.{rl.name}"], rl.name))
            off = (off + rl.struct.size + 7) & ~7
        self.walsnd: list[Region] = []
        for i in range(max_wal_senders):
            mutex = Mutex(sems[f"lock.walsnd{i}"], f"walsnd{i}")
            self.walsnd.append(Region(buf, off, layout.WALSND, mutex))
            off = (off + layout.WALSND.struct.size + 7) & ~7
        self.latches: dict[str, Latch] = {
            role: Latch(sems[f"latch.{role}"], role) for role in layout.LATCH_ROLES
        }
        self.walsnd_latches = [Latch(sems[f"latch.walsnd{i}"], f"walsnd{i}")
                               for i in range(max_wal_senders)]

    # Convenience accessors, so call sites read like PostgreSQL's structs.
    @property
    def pm(self) -> Region:
        return self.regions["pm"]

    @property
    def xlog(self) -> Region:
        return self.regions["xlog"]

    @property
    def archiver(self) -> Region:
        return self.regions["archiver"]

    @property
    def recovery(self) -> Region:
        return self.regions["recovery"]

    @property
    def walrcv(self) -> Region:
        return self.regions["walrcv"]

    @staticmethod
    def size_for(max_wal_senders: int) -> int:
        off = (layout.HEADER.size + 7) & ~7
        for rl in layout.SINGLE_REGIONS:
            off = (off + rl.struct.size + 7) & ~7
        off += max_wal_senders * ((layout.WALSND.struct.size + 7) & ~7)
        return off

    @staticmethod
    def _sem_names(max_wal_senders: int) -> dict[str, int]:
        """Semaphore suffix -> initial value."""
        out = {f"lock.{rl.name}": 1 for rl in layout.SINGLE_REGIONS}
        out.update({f"latch.{r}": 0 for r in layout.LATCH_ROLES})
        for i in range(max_wal_senders):
            out[f"lock.walsnd{i}"] = 1
            out[f"latch.walsnd{i}"] = 0
        return out

    @classmethod
    def create(cls, datadir: str, max_wal_senders: int, postmaster_pid: int) -> "SharedState":
        """Remove stale objects of this data directory, then create fresh ones."""
        names.remove_objects(datadir)
        size = cls.size_for(max_wal_senders)
        shm = posix_ipc.SharedMemory(names.segment_name(datadir), posix_ipc.O_CREX, mode=0o600, size=size)
        buf = mmap.mmap(shm.fd, size)
        shm.close_fd()
        sems = {}
        for suffix, initial in cls._sem_names(max_wal_senders).items():
            sems[suffix] = posix_ipc.Semaphore(names.semaphore_name(datadir, suffix),
                                               posix_ipc.O_CREX, mode=0o600, initial_value=initial)
        layout.HEADER.pack_into(buf, 0, layout.MAGIC, layout.LAYOUT_VERSION, size,
                                postmaster_pid, int(time.time() * 1e6))
        # Store max_wal_senders where an attacher can find it: in the walsnd count
        # implied by size.  (Attach recomputes it from the size.)
        return cls(datadir, shm, buf, max_wal_senders, sems)

    @classmethod
    def attach(cls, datadir: str) -> "SharedState":
        """Attach by name (for tools). Raises ShmemError if the server is not running."""
        try:
            shm = posix_ipc.SharedMemory(names.segment_name(datadir))
        except posix_ipc.ExistentialError:
            raise ShmemError(f'no shared memory for data directory "{datadir}": is the server running?') from None
        size = shm.size
        buf = mmap.mmap(shm.fd, size)
        shm.close_fd()
        magic, version, stored_size, _pid, _t = layout.HEADER.unpack_from(buf, 0)
        if magic != layout.MAGIC or version != layout.LAYOUT_VERSION or stored_size != size:
            buf.close()
            raise ShmemError(f'shared memory of "{datadir}" has an unknown layout (version {version})')
        base = cls.size_for(0)
        per = (layout.WALSND.struct.size + 7) & ~7
        max_wal_senders = (size - base) // per
        sems = {}
        for suffix in cls._sem_names(max_wal_senders):
            try:
                sems[suffix] = posix_ipc.Semaphore(names.semaphore_name(datadir, suffix))
            except posix_ipc.ExistentialError:
                buf.close()
                raise ShmemError(f'semaphore "{suffix}" of "{datadir}" is missing') from None
        return cls(datadir, shm, buf, max_wal_senders, sems)

    @property
    def postmaster_pid(self) -> int:
        return layout.HEADER.unpack_from(self.buf, 0)[3]

    def close(self) -> None:
        """Drop this process's handles (no unlink)."""
        for sem in self._sems.values():
            with contextlib.suppress(Exception):
                sem.close()
        with contextlib.suppress(Exception):
            self.buf.close()

    def destroy(self) -> None:
        """Unlink everything (postmaster only)."""
        self.close()
        names.remove_objects(self.datadir)

    def free_walsnd_slot(self, pid: int) -> int | None:
        """Claim a walsender slot for pid; None when all max_wal_senders are in use."""
        for i, slot in enumerate(self.walsnd):
            with slot.locked():
                if slot.get("pid") == 0:
                    slot.clear()
                    slot.set(pid=pid)
                    return i
        return None
