#!/usr/bin/env python3
"""Import cycles between the modules of a crate's `src/` directory.

A module is a top-level module of the crate (`src/<name>.rs` or `src/<name>/`). Module A
depends on module B when a file of A names `crate::B` (in a `use` or a path) or, at the top
level, `super::B`. Tests (`#[cfg(test)] mod tests` blocks at the end of a file) are left out:
what matters is the shape of the code that ships. Prints every strongly connected component
of more than one module (each is an import cycle) and exits 1 when there is one.

    python3 scripts/module-cycles.py broker/src [--files] [--graph]

`--files` does the same one level down: every file is a node (a directory module's `mod.rs`
and its children are separate nodes). Declaring a child (`mod x;`) is not a dependency; a
parent that names `x::…` (a re-export or a call) depends on it, and a child that names
`super::…` depends on its parent.
"""
import os
import re
import sys

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\};", re.S)


def strip_tests(text):
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+tests\b", text)
    return text[: cut.start()] if cut else text


def strip_comments(text):
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def nodes_of(src):
    files = {}
    for root, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            files["/".join(rel)] = path
    return files


def references(text):
    """(first, second) path segments named after `crate::`."""
    found = set(PATH.findall(text))
    for group in USE_GROUP.findall(text):
        for item in re.split(r",(?![^{]*\})", group):
            item = item.strip()
            m = re.match(r"([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?", item)
            if m:
                found.add((m.group(1), m.group(2) or ""))
    return found


def tarjan(graph):
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    src = sys.argv[1]
    by_file = "--files" in sys.argv
    files = nodes_of(src)
    graph = {}
    for node, path in files.items():
        with open(path, encoding="utf-8") as f:
            text = strip_comments(strip_tests(f.read()))
        me = node if by_file else node.split("/")[0]
        if me in ("lib", "main"):
            continue
        edges = graph.setdefault(me, set())
        for first, second in references(text):
            if by_file:
                target = f"{first}/{second}" if f"{first}/{second}" in files else first
                parent_child = target.startswith(me + "/") or me.startswith(target + "/")
                if target in files and target != me and not parent_child:
                    edges.add(target)
            elif first in files or any(k.startswith(first + "/") for k in files):
                if first != me:
                    edges.add(first)
        if by_file:
            for child in files:
                if child.startswith(me + "/") and "/" not in child[len(me) + 1 :]:
                    name = child[len(me) + 1 :]
                    if re.search(r"(?<!crate::)(?<!mod )\b" + name + r"::", text):
                        edges.add(child)
            if "/" in me and re.search(r"\bsuper::", text):
                edges.add(me.rsplit("/", 1)[0])
    for node in list(graph):
        graph[node] = {t for t in graph[node] if t in graph}
    if "--graph" in sys.argv:
        for node in sorted(graph):
            print(f"{node} -> {', '.join(sorted(graph[node]))}")
    cycles = [c for c in tarjan(graph) if len(c) > 1]
    level = "files" if by_file else "modules"
    print(f"{len(graph)} {level}; {len(cycles)} import cycle(s)")
    for cycle in cycles:
        print(f"  cycle of {len(cycle)}: {' '.join(cycle)}")
    sys.exit(1 if cycles else 0)


main()
