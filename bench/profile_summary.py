#!/usr/bin/env python3
"""Summarise ``py-spy record --format raw`` profiles (collapsed stacks) as tables.

``compare.py --profile-dir DIR`` records one file per xdpstack measurement and process
(``<measurement>-daemon.txt``, ``<measurement>-client.txt``: the client is the server app
on the client library). This prints, for each file, the functions with the most samples on
top of the stack (self) and in the stack at all (inclusive), and the share of each part of
the code (the stack's layers, the API server, the datapath, the client library)::

    .venv/bin/python bench/profile_summary.py DIR/*.txt [--top 15]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")

#: (part, path fragment) in order: the first fragment found in a frame's file names it.
PARTS = (
    ("datapath (AF_XDP, cffi)", "datapath/"),
    ("API server (Unix socket)", "xdpstackd/api/"),
    ("protocol (frames, both sides)", "xdpstack/protocol.py"),
    ("client library: xdpstack.socket", "xdpstack/socket.py"),
    ("client library: Lib", "xdpstack/lib.py"),
    ("engine", "xdpstackd/engine.py"),
    ("TCP: established", "layer4/tcp/established/"),
    ("TCP: other", "layer4/"),
    ("IPv4", "layer3/"),
    ("Ethernet/ARP", "layer2/"),
    ("stack (dispatch)", "inetstack/"),
    ("asyncio/selectors", "asyncio/"),
    ("bench workload", "compare_workload.py"),
)


def parse(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def function(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``: lines of one function counted together."""
    m = FRAME.match(frame)
    return f"{m['func']} ({m['file']})" if m else frame


def part(frame: str) -> str:
    for name, fragment in PARTS:
        if fragment in frame:
            return name
    return "other (interpreter, stdlib)"


def summary(path: Path, top: int) -> str:
    stacks = parse(path)
    total = sum(stacks.values())
    if not total:
        return f"{path.name}: no samples"
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for stack, count in stacks.items():
        leaf = stack[-1]
        own[function(leaf)] += count
        parts[part(leaf)] += count
        for name in {function(f) for f in stack}:
            inclusive[name] += count
    lines = [f"== {path.name}: {total} samples"]
    lines.append("  by part of the code (self samples):")
    for name, count in parts.most_common():
        lines.append(f"    {count / total:6.1%}  {name}")
    lines.append(f"  top {top} functions, self:")
    for name, count in own.most_common(top):
        lines.append(f"    {count / total:6.1%}  {name}")
    lines.append(f"  top {top} functions, inclusive (below the event loop):")
    skip = ("<module>", "main (", "run (", "_serve (", "run_until_complete", "serve (")
    shown = 0
    for name, count in inclusive.most_common():
        if name.startswith(skip) or count == total:
            continue
        lines.append(f"    {count / total:6.1%}  {name}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    for path in args.files:
        print(summary(path, args.top))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
