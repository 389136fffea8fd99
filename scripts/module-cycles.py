#!/usr/bin/env python3
"""Fails when a crate's modules depend on each other in a cycle (a `crate::m` reference, or
`use crate::{m, ...}`, outside `#[cfg(test)]`). A crate's root (lib.rs / main.rs) is not a
module here: it holds what its modules share."""
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def deps(text, names):
    i = text.find("#[cfg(test)]")
    if i >= 0:
        text = text[:i]
    found = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
    for group in re.findall(r"use crate::\{([^;]*)\};", text, re.S):
        found |= set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", group))
    return {d for d in found if d in names}


def cycles(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    bad = 0
    crates = os.path.join(REPO, "crates")
    for crate in sorted(os.listdir(crates)):
        src = os.path.join(crates, crate, "src")
        if not os.path.isdir(src):
            continue
        files = {}
        for dirpath, _, filenames in os.walk(src):
            for f in filenames:
                if f.endswith(".rs"):
                    rel = os.path.relpath(os.path.join(dirpath, f), src)
                    top = rel[:-3].split("/")[0]
                    if top in ("lib", "main") or rel.startswith("bin/"):
                        continue
                    files.setdefault(top, []).append(os.path.join(dirpath, f))
        names = set(files)
        graph = {m: set() for m in names}
        for m, paths in files.items():
            for p in paths:
                graph[m] |= deps(open(p).read(), names) - {m}
        for comp in cycles(graph):
            bad += 1
            print(f"module cycle in crates/{crate}: " + ", ".join(
                f"{m} -> {sorted(graph[m] & set(comp))}" for m in comp), file=sys.stderr)
    if bad:
        sys.exit(1)
    print("no module cycles")


if __name__ == "__main__":
    main()
