"""Layering check of the jaxmatch package: no import cycle, no private name
imported from another module.

Reads every ``from .module import name`` of ``jaxmatch/*.py`` (deferred imports
inside functions too) and exits non-zero on a cycle between modules or on a
``_private`` name imported across modules, except for the ones listed in
``KNOWN``, which are to be removed (each entry says where it is).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jaxmatch"

# (importer, module, name): existing cross-module private imports to be removed.
KNOWN: set[tuple[str, str, str]] = set()
# Import cycles through a deferred (function-level) import, to be removed.
KNOWN_CYCLES: set[frozenset[str]] = set()


def imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every relative import in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:  # from . import x
                out += [(alias.name, "") for alias in node.names]
            else:
                out += [(node.module.split(".")[0], alias.name) for alias in node.names]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's node set found by depth-first search (one per set)."""
    found, seen = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt) :]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif len(path) < 30:
                visit(nxt, path + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def main() -> int:
    graph: dict[str, set[str]] = {}
    private = []
    for path in sorted(PACKAGE.glob("*.py")):
        me = path.stem
        for module, name in imports(path):
            if me != "__init__":
                graph.setdefault(me, set()).add(module)
            if name.startswith("_") and not name.startswith("__") and me != "__init__":
                if (me, module, name) not in KNOWN:
                    private.append(f"{me} imports {module}.{name}")
    bad_cycles = [c for c in cycles(graph) if frozenset(c) not in KNOWN_CYCLES]
    for line in private:
        print("private import:", line)
    for cycle in bad_cycles:
        print("import cycle:", " -> ".join(cycle + [cycle[0]]))
    if not private and not bad_cycles:
        print(f"imports ok ({len(graph)} modules; known exceptions: {len(KNOWN)} private, "
              f"{len(KNOWN_CYCLES)} cycle)")
    return 1 if private or bad_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
