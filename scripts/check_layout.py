#!/usr/bin/env python3
"""Checks the source tree's layout (issue 21's rules), without building anything:

- no circle in the import graph between files of src/ (a `use` or path naming another file's module);
- no import from a lower layer to a higher one, the layers in data-flow order (LAYERS below);
- no source file over MAX_LINES lines.

Imports inside `#[cfg(test)]` modules are left out: a test may use anything (the simulator, a test stand-in).
Prints each violation and exits 1 if there is any; `--graph` prints the file-level import graph.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_LINES = 700

# Top-level modules, lowest first: a module may import from its own layer and those before it.
LAYERS = [
    {"", "volume", "spatial", "stats", "rng", "npy", "nifti"},  # "" is lib.rs (error_chain)
    {"scanner"},
    {"ingest"},
    {"preprocess"},
    {"decode"},
    {"generate"},
    {"display", "feedback", "web"},
    {"evaluate"},
    {"config"},
    {"simulate"},
    {"live"},
    {"cli", "main"},
]


def module_of(path):
    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
        if not parts and path.endswith("main.rs"):
            parts = ["main"]
    return tuple(parts)


def split_use_tree(tree):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^([\w:]*?)(?:::)?\{(.*)\}$", tree)
    if not m:
        tree = re.sub(r"as\w+$", "", tree)
        return [[p for p in tree.split("::") if p]]
    prefix = [p for p in m.group(1).split("::") if p]
    items, depth, cur = [], 0, ""
    for ch in m.group(2):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for item in filter(None, items):
        for sub in split_use_tree(item):
            out.append(prefix + sub)
    return out


def strip_tests_and_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(\w+\))?\s+)?mod \w+\s*\{", text)
    if m:
        # the test module runs to the end of the file by convention here; cut at its matching brace
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += text[i] == "{"
            depth -= text[i] == "}"
            if depth == 0:
                break
            i += 1
        text = text[: m.start()] + text[i + 1 :]
    # `#[cfg(test)] mod tests;` (a file of its own) and items marked #[cfg(test)]
    text = re.sub(r"#\[cfg\(test\)\]\s*(pub(\(\w+\))?\s+)?mod \w+;", "", text)
    return text


def build_graph():
    files = {}
    for d, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                path = os.path.join(d, name)
                files[module_of(path)] = path
    test_files = set()
    for mod, path in files.items():
        text = open(path).read()
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\(\w+\))?\s+)?mod (\w+);", text):
            test_files.add(mod + (m.group(1),))

    def resolve(parts):
        for n in range(len(parts), -1, -1):
            if tuple(parts[:n]) in files:
                return tuple(parts[:n])
        return None

    edges = defaultdict(set)
    for mod, path in files.items():
        if mod in test_files:
            continue
        text = strip_tests_and_comments(open(path).read())
        is_dir_module = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths.extend(split_use_tree(m.group(1)))
        for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
            paths.append(m.group(1).split("::"))
        for segs in paths:
            if not segs:
                continue
            if segs[0] in ("crate", "hyper_rt"):
                target = segs[1:]
            elif segs[0] in ("super", "self"):
                # a file's own module is `mod`; `super` of a file a/b.rs is a, of a/b/mod.rs is a too
                cur = list(mod)
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        cur = cur[:-1]
                    segs = segs[1:]
                target = cur + segs
            elif is_dir_module and (mod + (segs[0],)) in files:
                target = list(mod) + segs
            else:
                continue
            found = resolve(target)
            if found is not None and found != mod:
                edges[mod].add(found)
    return files, edges


def layer_of(mod):
    top = mod[0] if mod else ""
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    return None


def cycles(files, edges):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(files):
        if v not in index:
            visit(v)
    return out


def name(mod):
    return "/".join(mod) or "lib"


def main():
    files, edges = build_graph()
    problems = []
    for comp in cycles(files, edges):
        inner = [f"{name(a)} -> {name(b)}" for a in comp for b in sorted(edges[a]) if b in comp]
        problems.append("import circle: " + "; ".join(inner))
    for a in sorted(edges):
        for b in sorted(edges[a]):
            la, lb = layer_of(a), layer_of(b)
            if la is None or lb is None:
                problems.append(f"{name(a)} -> {name(b)}: a top-level module missing from LAYERS")
            elif lb > la:
                problems.append(f"{name(a)} imports {name(b)}, a higher layer")
    for mod, path in sorted(files.items()):
        n = sum(1 for _ in open(path))
        if n > MAX_LINES:
            problems.append(f"{os.path.relpath(path, os.path.dirname(ROOT))}: {n} lines (at most {MAX_LINES})")
    if "--graph" in sys.argv:
        for a in sorted(edges):
            print(f"{name(a)} -> {', '.join(name(b) for b in sorted(edges[a]))}")
    for p in problems:
        print(p)
    print(f"{len(files)} files, {sum(len(e) for e in edges.values())} imports between them, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
