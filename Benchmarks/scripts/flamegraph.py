#!/usr/bin/env python3
"""A flame graph (SVG) of a `perf record -g` profile, with no tool beyond perf and Python.

    perf record -F 2000 -g -p PID -o perf.data -- sleep 5
    perf script -i perf.data | Benchmarks/scripts/flamegraph.py --title "POST -P 16" > post.svg

It folds each sample's stack (root first), merges equal prefixes, and draws one box per frame,
as wide as its share of the samples, callers below callees (Brendan Gregg's layout). Swift
symbols are demangled with swift-demangle when it is on the PATH. Boxes under 0.1% are left out.
"""

import argparse
import collections
import html
import shutil
import subprocess
import sys


def stacks(lines):
    """Yields each sample's frames, root first."""
    frames = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield list(reversed(frames))
            frames = []
        elif line.startswith((" ", "\t")):
            parts = line.strip().split(" ", 1)
            symbol = parts[1] if len(parts) > 1 else parts[0]
            symbol = symbol.rsplit(" (", 1)[0]
            if "+0x" in symbol:
                symbol = symbol.split("+0x", 1)[0]
            frames.append(symbol)
    if frames:
        yield list(reversed(frames))


def demangler(symbols):
    tool = shutil.which("swift-demangle")
    if not tool:
        return {s: s for s in symbols}
    names = sorted(symbols)
    output = subprocess.run([tool, "--simplified"], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, output.split("\n")))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--title", default="flame graph")
    parser.add_argument("--width", type=int, default=1400)
    options = parser.parse_args()

    root = {"count": 0, "children": collections.OrderedDict()}
    symbols = set()
    for frames in stacks(sys.stdin):
        node = root
        node["count"] += 1
        for frame in frames:
            symbols.add(frame)
            node = node["children"].setdefault(frame, {"count": 0, "children": collections.OrderedDict()})
            node["count"] += 1
    names = demangler(symbols)
    total = max(root["count"], 1)
    row = 16
    boxes = []
    depth_max = [0]

    def walk(node, name, x, depth):
        width = node["count"] / total * options.width
        if width < options.width * 0.001:
            return
        depth_max[0] = max(depth_max[0], depth)
        if name is not None:
            boxes.append((x, depth, width, names.get(name, name), node["count"]))
        child_x = x
        for child_name, child in sorted(node["children"].items(), key=lambda item: item[0]):
            walk(child, child_name, child_x, depth + 1)
            child_x += child["count"] / total * options.width

    walk(root, None, 0, 0)
    height = (depth_max[0] + 3) * row
    out = [
        '<?xml version="1.0" standalone="no"?>',
        '<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="monospace" font-size="11">'
        .format(options.width, height),
        '<rect width="100%" height="100%" fill="#fdfdf6"/>',
        '<text x="6" y="14">{} ({} samples)</text>'.format(html.escape(options.title), total),
    ]
    for x, depth, width, name, count in boxes:
        y = height - depth * row - 2
        hue = 20 + sum(name.encode()) % 40
        label = name if len(name) * 6.5 < width else name[: max(0, int(width / 6.5) - 2)] + ".." if width > 20 else ""
        out.append(
            '<g><title>{} ({:.2f}%)</title><rect x="{:.1f}" y="{}" width="{:.1f}" height="{}" fill="hsl({},85%,60%)" '
            'stroke="#fdfdf6" stroke-width="0.5"/><text x="{:.1f}" y="{}">{}</text></g>'.format(
                html.escape(name), 100.0 * count / total, x, y, width, row - 1, hue, x + 2, y + 11, html.escape(label)))
    out.append("</svg>")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
