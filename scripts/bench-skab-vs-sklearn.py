#!/usr/bin/env python3
"""Speed of Impeller's PCA T²+Q and Isolation Forest against scikit-learn's, same data, same run.

Runs `impeller bench skab --json` for the pca and isolation_forest detectors, then fits and scores
scikit-learn's PCA (with the same T² and Q statistics) and IsolationForest on exactly the same
inputs: every SKAB file, trained on its first 400 rows, the same channels (the ones the bench
reports as used) and the same features (rolling mean and std over 10 rows), scaled the same way.

Per-row scoring time is measured one row at a time, as on a device, for scikit-learn's API and,
for PCA, also for numpy products on the fitted components (what one would write to go fast). For
scikit-learn it covers only the model call on a precomputed feature vector; Impeller's figure also includes computing the
features and the calibration, so the ratio understates Impeller's advantage.

    pip install numpy scikit-learn
    python3 scripts/bench-skab-vs-sklearn.py --data ../shared/datasets/skab [--impeller target/release/impeller]
"""
import argparse
import csv
import json
import os
import subprocess
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--impeller", default="target/release/impeller")
ap.add_argument("--json", action="store_true")
a = ap.parse_args()

out = subprocess.run(
    [a.impeller, "-q", "bench", "skab", "--data", a.data, "--detector", "pca", "--detector", "isolation_forest", "--json"],
    check=True, capture_output=True, text=True,
).stdout
rep = json.loads(out)
channels = [c["channel"] for c in rep["channels"] if c["used"]]
ours = {d["name"]: d for d in rep["detectors"]}
TRAIN, WINDOW = rep["train_rows"], 10


def files():
    found = []
    for root, _dirs, names in os.walk(a.data):
        for n in names:
            p = os.path.join(root, n)
            if n.endswith(".csv") and "anomaly-free" not in p:
                found.append(p)
    return sorted(found)


def features(x):
    """Rolling mean and population std over the last WINDOW rows, per channel, channel-major."""
    n, c = x.shape
    out = np.zeros((n - WINDOW + 1, 2 * c))
    for i in range(WINDOW - 1, n):
        w = x[i - WINDOW + 1 : i + 1]
        out[i - WINDOW + 1, 0::2] = w.mean(0)
        out[i - WINDOW + 1, 1::2] = w.std(0)
    return out


def load(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    return np.array([[float(r[c]) for c in channels] for r in rows])


sk = {k: {"train_s": 0.0, "score_s": 0.0, "rows": 0} for k in ("pca", "pca (numpy)", "isolation_forest")}
for path in files():
    f = features(load(path))
    train, test = f[: TRAIN - WINDOW + 1], f[TRAIN - WINDOW + 1 :]

    t = time.perf_counter()
    mu, sd = train.mean(0), train.std(0)
    sd[sd < 1e-9] = 1e-9
    z = (train - mu) / sd
    pca = PCA(n_components=0.9, svd_solver="full").fit(z)
    lam = pca.explained_variance_
    sk["pca"]["train_s"] += time.perf_counter() - t

    t = time.perf_counter()
    for row in test:
        zr = ((row - mu) / sd)[None, :]
        s = pca.transform(zr)
        t2 = float((s**2 / lam).sum())
        q = float(((zr - pca.inverse_transform(s)) ** 2).sum())
    sk["pca"]["score_s"] += time.perf_counter() - t
    sk["pca"]["rows"] += len(test)

    # The same statistics with numpy on the fitted components: no per-call validation.
    comp, centre = pca.components_, pca.mean_
    sk["pca (numpy)"]["train_s"] = sk["pca"]["train_s"]
    t = time.perf_counter()
    for row in test:
        zr = (row - mu) / sd - centre
        s = comp @ zr
        t2 = float((s * s / lam).sum())
        r = zr - s @ comp
        q = float(r @ r)
    sk["pca (numpy)"]["score_s"] += time.perf_counter() - t
    sk["pca (numpy)"]["rows"] += len(test)

    t = time.perf_counter()
    forest = IsolationForest(n_estimators=100, max_samples=256, random_state=0).fit(z)
    sk["isolation_forest"]["train_s"] += time.perf_counter() - t
    t = time.perf_counter()
    for row in test:
        forest.score_samples(((row - mu) / sd)[None, :])
    sk["isolation_forest"]["score_s"] += time.perf_counter() - t
    sk["isolation_forest"]["rows"] += len(test)

result = []
for name, s in sk.items():
    o = ours[name.split(" ")[0]]
    sk_us = s["score_s"] * 1e6 / s["rows"]
    result.append({
        "detector": name,
        "impeller_train_ms": o["train_ms"], "sklearn_train_ms": s["train_s"] * 1e3,
        "train_speedup": s["train_s"] * 1e3 / o["train_ms"],
        "impeller_us_per_row": o["score_us_per_row"], "sklearn_us_per_row": sk_us,
        "score_speedup": sk_us / o["score_us_per_row"],
    })

if a.json:
    print(json.dumps(result, indent=1))
else:
    print(f"SKAB, {len(files())} files, channels: {', '.join(channels)}")
    print(f"{'detector':18s} {'train ms (impeller / sklearn)':>30s} {'ratio':>7s} {'µs/row (impeller / sklearn)':>30s} {'ratio':>8s}")
    for r in result:
        print(f"{r['detector']:18s} {r['impeller_train_ms']:>13.1f} / {r['sklearn_train_ms']:<14.1f} {r['train_speedup']:>6.1f}x "
              f"{r['impeller_us_per_row']:>13.3f} / {r['sklearn_us_per_row']:<14.1f} {r['score_speedup']:>7.0f}x")
