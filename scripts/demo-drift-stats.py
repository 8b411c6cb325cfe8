#!/usr/bin/env python3
"""Drift statistics of the healthy pumps in a finished demo's folder.

Usage: cargo run --release -- demo --dir DIR && python3 scripts/demo-drift-stats.py DIR

Reads the ground truth (DIR/fleet/fleet.json) and the hub's drift reports (DIR/hub.db) and
prints, over every judged sketch of a pump that stayed healthy, the range of the worst-feature
PSI and Wasserstein distance, and how many sketches PSI's usual 0.25 alarm would have flagged.
"""
import json
import sqlite3
import sys

folder = sys.argv[1]
truth = json.load(open(f"{folder}/fleet/fleet.json"))
healthy = [p["id"] for p in truth["pumps"] if not p["faults"] and not p["drifts"]]
marks = ",".join("?" * len(healthy))
db = sqlite3.connect(f"{folder}/hub.db")
n, psi_lo, psi_hi, w_lo, w_hi, over = db.execute(
    "SELECT count(*), min(max_psi), max(max_psi), min(max_wasserstein), max(max_wasserstein), "
    f"sum(max_psi >= 0.25) FROM drift_reports WHERE state NOT IN ('no_reference', 'unreadable') "
    f"AND device IN ({marks})",
    healthy,
).fetchone()
print(f"healthy pumps: {len(healthy)}, judged sketches: {n}")
print(f"worst-feature PSI: {psi_lo:.2f} to {psi_hi:.2f}; sketches with PSI >= 0.25: {over}")
print(f"worst-feature Wasserstein: {w_lo:.2f} to {w_hi:.2f} sigma (drift alarm at 3.5)")
