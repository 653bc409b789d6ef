"""Fail when any module of server/, clients/ or loadtest/ is part of an import cycle.

import-linter's layers contract keeps the packages in order; this check covers
what it cannot see, a cycle between two modules of the same package.
Imports under TYPE_CHECKING and inside functions count, as the layering rule says.
Run by ``make lint``; exits 1 and prints each cycle found.
"""

from __future__ import annotations

import sys

import grimp

PACKAGES = ("server", "clients", "loadtest")


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, ()):
                    groups.append(sorted(group))
    return groups


def main() -> int:
    imports = grimp.build_graph(*PACKAGES, include_external_packages=False)
    graph = {module: set(imports.find_modules_directly_imported_by(module)) for module in imports.modules}
    # A package's __init__ importing its own submodules is how a package exports: not a cycle of meaning.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not t.startswith(module + ".")}
    cycles = strongly_connected(graph)
    for group in cycles:
        print("import cycle:", " <-> ".join(group))
    if not cycles:
        print(f"no import cycle among {len(graph)} modules")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
