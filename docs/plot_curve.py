#!/usr/bin/env python3
"""Draws the allocation cost curve (docs/allocation-curve.svg) from the
criterion results of `cargo bench -p agora-master --bench allocation --
curve/`: one full round's mean time against the number of agents (10 agents
per framework), with a straight line through the origin and the smallest
shape for comparison. Standard library only.

    python3 docs/plot_curve.py [CRITERION_DIR] [OUT_SVG]
"""

import json
import os
import sys

criterion = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "allocation-curve.svg")

points = []
curve = os.path.join(criterion, "curve")
for name in os.listdir(curve):
    est = os.path.join(curve, name, "new", "estimates.json")
    if "x" not in name or not os.path.exists(est):
        continue
    agents, frameworks = (int(x) for x in name.split("x"))
    with open(est) as f:
        mean_ms = json.load(f)["mean"]["point_estimate"] / 1e6
    points.append((agents, frameworks, mean_ms))
points.sort()
if not points:
    sys.exit(f"no curve results under {curve}: run the benchmark first")

W, H, L, B, T, R = 640, 400, 70, 60, 30, 30
max_x = max(p[0] for p in points) * 1.05
max_y = max(p[2] for p in points) * 1.15


def x(v):
    return L + (W - L - R) * v / max_x


def y(v):
    return H - B - (H - B - T) * v / max_y


svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
    f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
    f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
    f'<text x="{(L + W - R) / 2}" y="{H - 20}" text-anchor="middle">agents (frameworks = agents / 10)</text>',
    f'<text x="18" y="{(T + H - B) / 2}" text-anchor="middle" transform="rotate(-90 18 {(T + H - B) / 2})">'
    "one full allocation round (ms)</text>",
    f'<text x="{(L + W - R) / 2}" y="18" text-anchor="middle">Allocation round cost, DRF allocator</text>',
]
step_x = 2000 if max_x > 4000 else 500
for v in range(0, int(max_x) + 1, step_x):
    svg.append(f'<line x1="{x(v):.1f}" y1="{H - B}" x2="{x(v):.1f}" y2="{H - B + 5}" stroke="black"/>')
    svg.append(f'<text x="{x(v):.1f}" y="{H - B + 18}" text-anchor="middle">{v}</text>')
step_y = 10 if max_y > 20 else 2
v = 0
while v <= max_y:
    svg.append(f'<line x1="{L - 5}" y1="{y(v):.1f}" x2="{L}" y2="{y(v):.1f}" stroke="black"/>')
    svg.append(f'<text x="{L - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    svg.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W - R}" y2="{y(v):.1f}" stroke="#eee"/>')
    v += step_y
# Linear from the smallest shape: what the cost would be if it grew exactly
# with agents.
a0, _, t0 = points[0]
svg.append(
    f'<line x1="{x(0):.1f}" y1="{y(0):.1f}" x2="{x(max_x):.1f}" y2="{y(t0 * max_x / a0):.1f}" '
    'stroke="#999" stroke-dasharray="4 4"/>'
)
svg.append(f'<text x="{x(max_x) - 4:.1f}" y="{y(min(t0 * max_x / a0, max_y)) + 14:.1f}" text-anchor="end" fill="#666">'
           "linear in agents, from the smallest</text>")
path = " ".join(f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(t):.1f}" for i, (a, _, t) in enumerate(points))
svg.append(f'<path d="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
for a, f, t in points:
    svg.append(f'<circle cx="{x(a):.1f}" cy="{y(t):.1f}" r="4" fill="#1f77b4"/>')
    svg.append(f'<text x="{x(a) + 6:.1f}" y="{y(t) - 8:.1f}">{a}x{f}: {t:.1f} ms</text>')
svg.append("</svg>")
with open(out, "w") as f:
    f.write("\n".join(svg) + "\n")
print(f"wrote {out} from {len(points)} points")
