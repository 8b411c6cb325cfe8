#!/usr/bin/env python3
"""Choose each detector's alarm margin for `impeller bench skab` on the dev split only.

Runs the bench on the dev half of SKAB (even file numbers) for a grid of margins and prints, per
detector, the margin with the best dev F1 among those with dev FAR <= 15 %. The holdout half (odd
file numbers) is never scored here. The chosen margins go into
crates/impeller/config/bench-skab.toml.

    python3 scripts/skab-tune-margins.py --data ../shared/datasets/skab [--impeller target/release/impeller]
"""
import argparse
import json
import subprocess

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--impeller", default="target/release/impeller")
ap.add_argument("--max-far", type=float, default=15.0)
ap.add_argument("--config", help="bench configuration to tune (default: the built-in one)")
a = ap.parse_args()

grid = [round(0.5 * 1.1**i, 2) for i in range(44)]  # 0.5 .. 30, 10 % steps
rows = {}
for m in grid:
    out = subprocess.run(
        [a.impeller, "-q", "bench", "skab", "--data", a.data, "--split", "dev", "--margin", str(m), "--json"]
        + (["--config", a.config] if a.config else []),
        check=True, capture_output=True, text=True,
    ).stdout
    for d in json.loads(out)["detectors"]:
        rows.setdefault(d["name"], []).append((m, d["f1"], d["far_pct"], d["mar_pct"]))

for name, rs in rows.items():
    ok = [r for r in rs if r[2] <= a.max_far]
    best = max(ok, key=lambda r: r[1]) if ok else None
    print(f"{name:18s} chosen margin: {best[0] if best else 'none'}"
          + (f"  (dev F1 {best[1]:.3f}, FAR {best[2]:.2f} %, MAR {best[3]:.2f} %)" if best else ""))
    for m, f1, far, mar in rs:
        print(f"    margin {m:4.1f}: F1 {f1:.3f}  FAR {far:6.2f} %  MAR {mar:6.2f} %")
