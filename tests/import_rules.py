"""The import rules of the layout, checked from the code (DESIGN.md section 2).

* A process folder imports only the shared folders and itself: never another process's folder.
* The postmaster may import the entry points it forks, and nothing else of a process.
* The shared folders import only shared folders.
* ``walswitch/`` (the command line) may import anything; nothing imports it.
* No module takes part in an import cycle, counting imports inside functions and under
  ``TYPE_CHECKING`` (a cycle hidden there is still a cycle in the design).

``python -m tests.import_rules [ROOT]`` prints one line per violation and exits 1 if there is one;
the test runs it on the tree and on a copy with a forbidden import planted, so the rule can fail.
"""
from __future__ import annotations

import sys

import grimp

PROCESSES = ("postmaster", "startup", "walreceiver", "backend", "walsender", "archiver")
SHARED = ("shmem", "xlog", "storage", "libpq", "utils")
CLI = "walswitch"
PACKAGES = PROCESSES + SHARED + (CLI,)
# What the postmaster forks: the only modules of other processes it may import.
ENTRY_POINTS = {"startup.startup", "walreceiver.walreceiver", "backend.backend", "walsender.walsender",
                "archiver.archiver"}


def top(module: str) -> str:
    return module.split(".", 1)[0]


def arrow_allowed(importer: str, imported: str) -> bool:
    src, dst = top(importer), top(imported)
    if src == dst or src == CLI or dst in SHARED:
        return dst != CLI or src == CLI
    if dst == CLI:
        return False
    if src == "postmaster" and dst in PROCESSES:
        return imported in ENTRY_POINTS
    return False  # a shared folder importing a process, or a process importing another process


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative: no recursion bound)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def violations() -> list[str]:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    out: list[str] = []
    edges: dict[str, set[str]] = {}
    for importer in sorted(graph.modules):
        imported_set = graph.find_modules_directly_imported_by(importer)
        edges[importer] = {m for m in imported_set if top(m) in PACKAGES and not m.endswith("__init__")}
        for imported in sorted(edges[importer]):
            if not arrow_allowed(importer, imported):
                lines = graph.get_import_details(importer=importer, imported=imported)
                where = ", ".join(f"line {d['line_number']}" for d in lines)
                out.append(f"forbidden import: {importer} imports {imported} ({where})")
    for comp in cycles(edges):
        out.append("import cycle among: " + ", ".join(comp))
    return out


def main() -> int:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    found = violations()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
