#!/usr/bin/env python3
"""The gateway's import graph, file by file: circles and arrows that run back up the path.

Reads every `crate::…` and `super::…` path under gateway/src (use lines and inline paths),
resolves each to the file that defines the module, and prints the strongly connected
components of more than one file (circles) and the edges that point from a later stage of the
path to an earlier one (arrows back up). Exits 1 when there is a circle.

  python3 .ci/imports.py [--edges] [--max-up N]
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gateway", "src")
# The path a press travels, then what sits beside it. A stage may use the stages after it.
# `main` and `admin` (the CLI) and `lib` (the wiring) sit on top; `api` and `desk` are the
# outer surface; then the path itself in the order a press travels: the embedded broker,
# intake (which looks up the device and its resident, then asks the rules), dispatch, feedback.
# At the bottom the ports every stage may use, as they may use config and telemetry: the MQTT
# seam (`adapter` decodes, `source` reads and publishes) and the journal (`store`).
ORDER = ["main", "admin", "lib", "api", "desk", "broker", "intake", "supervision",
         "lifecycle", "flood", "residents", "devices", "rules", "dispatch", "feedback",
         "adapter", "source", "store", "telemetry", "config", "clock"]


def modpath(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def files():
    out = {}
    for d, _, fs in os.walk(ROOT):
        for f in fs:
            if f.endswith(".rs"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)
                out[modpath(rel)] = rel
    return out


def strip(src):
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r'"(\\.|[^"\\])*"', '""', src)
    return src


def expand(tree):
    """`a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e]"""
    tree = tree.replace(" ", "").replace("\n", "")
    m = re.match(r"^([\w:]*?)(::)?\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, body = m.group(1), m.group(3)
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            items.append(cur); cur = ""; continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it:
            for e in expand(it):
                out.append(prefix + "::" + e if prefix else e)
    return out


def resolve(mods, base, path):
    segs = [s for s in path.split("::") if s]
    if segs and segs[0] == "self":
        cur = list(base)
        segs = segs[1:]
    elif segs and segs[0] == "crate":
        cur = []
        segs = segs[1:]
    else:
        cur = list(base)
        while segs and segs[0] == "super":
            cur = cur[:-1]
            segs = segs[1:]
    best = None
    for i in range(len(segs) + 1):
        cand = tuple(cur + segs[:i])
        if cand in mods:
            best = cand
    return best


def graph():
    mods = files()
    edges = set()
    for m, rel in mods.items():
        src = strip(open(os.path.join(ROOT, rel)).read())
        # Inline tests are not part of the module's shape.
        src = re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", src)[0]
        paths = []
        for u in re.finditer(r"\buse\s+(\w+(?:::[\w{}, \n*]+)+?);", src, re.S):
            for e in expand(u.group(1)):
                first = e.split("::")[0]
                if first in ("crate", "super", "self"):
                    paths.append(e)
                elif m + (first,) in mods:  # a child module, named relatively
                    paths.append("self::" + e)
        for p in re.finditer(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", src):
            paths.append(p.group(1))
        for p in paths:
            # A file in a module dir uses its own module root via super: that is inside the module
            t = resolve(mods, m, p)
            if t is not None and t != m:
                edges.add((m, t))
    return mods, edges


def scc(nodes, edges):
    adj = {n: [] for n in nodes}
    for a, b in edges:
        adj[a].append(b)
    idx, low, on, st, out, n = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        idx[v] = low[v] = n[0]; n[0] += 1; st.append(v); on.add(v)
        for w in adj[v]:
            if w not in idx:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            out.append(comp)
    for v in nodes:
        if v not in idx:
            visit(v)
    return out


def rank(m):
    top = m[0] if m else "lib"
    return ORDER.index(top) if top in ORDER else len(ORDER)


def main():
    mods, edges = graph()
    # A parent module file and its own submodules form one unit: edges between a module and
    # the files under it are its own business, not arrows between stages.
    stage_edges = edges
    show = lambda m: mods[m]
    comps = [c for c in scc(list(mods), stage_edges) if len(c) > 1]
    for c in comps:
        print(f"circle of {len(c)} files: " + " ".join(sorted(show(m) for m in c)))
    # Arrows back up, counted between top-level modules (a stage and the one it reaches into).
    up = {}
    for a, b in sorted(stage_edges):
        if a[:1] != b[:1] and rank(a) > rank(b):
            up.setdefault((a[:1] or ("lib",), b[:1]), []).append(f"{show(a)} -> {show(b)}")
    for (a, b), via in sorted(up.items()):
        print(f"back up: {a[0]} -> {b[0]} ({', '.join(via)})")
    if "--edges" in sys.argv:
        for a, b in sorted(stage_edges):
            print(f"edge: {show(a)} -> {show(b)}")
    print(f"{len(comps)} circle(s), {len(up)} arrow(s) back up")
    max_up = None
    if "--max-up" in sys.argv:
        max_up = int(sys.argv[sys.argv.index("--max-up") + 1])
    sys.exit(1 if comps or (max_up is not None and len(up) > max_up) else 0)


main()
