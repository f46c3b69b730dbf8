"""Shared fixtures: nodes in a temporary directory, and the leak check.

Every test that starts servers gets them stopped at teardown and fails if any
process, shared-memory segment or semaphore of its servers was left behind;
the session ends by checking that no walswitch object remains at all.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cluster import Node, shm_objects, walswitch_processes  # noqa: E402


SESSION_DATADIRS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def no_leaks_at_end():
    """No process, segment or semaphore of any server this session started survives it."""
    yield
    left_procs = [p for d in SESSION_DATADIRS for p in walswitch_processes(d)]
    left_shm = [o for d in SESSION_DATADIRS for o in shm_objects(d)]
    for p in left_procs:
        p.kill()
    assert not left_procs, f"walswitch processes left after the suite: {[p.cmdline() for p in left_procs]}"
    assert not left_shm, f"shared memory/semaphores left after the suite: {sorted(left_shm)}"


class NodeFactory:
    def __init__(self, base: Path):
        self.base = base
        self.nodes: list[Node] = []

    def __call__(self, name: str = "node", **kw) -> Node:
        n = Node(self.base, name, **kw)
        self.nodes.append(n)
        SESSION_DATADIRS.append(n.datadir)
        return n

    def primary(self, name: str = "primary", segsize_mb: int = 1, start: bool = True, **conf) -> Node:
        n = self(name)
        n.init(segsize_mb, **conf)
        if start:
            n.start()
        return n

    def standby(self, primary: Node, name: str = "standby", start: bool = True, archive: str | None = None,
                **conf) -> Node:
        """A standby made by ``walswitch basebackup -R`` from a running primary."""
        from tests.cluster import walswitch
        n = self(name)
        walswitch("basebackup", "-d", primary.dsn(), "-D", n.datadir, "-R")
        if archive:
            conf.setdefault("restore_command", f"cp {archive}/%f %p")
        conf.setdefault("wal_retrieve_retry_interval", "1s")
        conf.setdefault("archive_mode", "off")
        n.set_conf(port=n.port, **conf)
        if start:
            n.start(wait_ready=False)
        return n


@pytest.fixture
def nodes(tmp_path):
    """Factory of nodes; all are stopped and leak-checked at teardown."""
    f = NodeFactory(tmp_path)
    yield f
    problems = []
    for n in reversed(f.nodes):
        problems += n.cleanup()
    assert not problems, "; ".join(problems)
