#!/usr/bin/env python3
"""Lists the import cycles between the top-level modules of the host crate.

Usage: python3 scripts/dev/module-cycles.py [host/src]

A module is a file or folder directly under the crate's `src/`; an edge A -> B is any
`crate::B` path written in A's code (`use` lines and inline paths alike, not comments). Prints each
strongly connected group of two or more modules, or "no cycles".
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "host/src"
modules = {}
for entry in os.listdir(root):
    name = entry[:-3] if entry.endswith(".rs") else entry
    if name in ("lib", "main"):
        continue
    path = os.path.join(root, entry)
    files = []
    if os.path.isdir(path):
        for d, _, fs in os.walk(path):
            files += [os.path.join(d, f) for f in fs if f.endswith(".rs")]
    elif entry.endswith(".rs"):
        files = [path]
    modules[name] = files

edges = {m: set() for m in modules}
for m, files in modules.items():
    for f in files:
        # Comments name modules without depending on them.
        text = re.sub(r"//[^\n]*", "", open(f, encoding="utf-8").read())
        for target in re.findall(r"\bcrate::([a-z_]+)", text):
            if target in modules and target != m:
                edges[m].add(target)

# Tarjan's strongly connected components.
index, low, on, stack, out = {}, {}, set(), [], []
counter = [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        group = []
        while True:
            w = stack.pop()
            on.discard(w)
            group.append(w)
            if w == v:
                break
        if len(group) > 1:
            out.append(sorted(group))


for v in sorted(modules):
    if v not in index:
        visit(v)
for group in out:
    print("cycle:", " <-> ".join(group))
if not out:
    print("no cycles among", len(modules), "modules")
