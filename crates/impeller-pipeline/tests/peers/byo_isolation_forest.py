"""A model trained elsewhere, as a data scientist would: a scikit-learn IsolationForest on SKAB's
anomaly-free recording, exported with skl2onnx. Writes the ONNX file, and the rows of one
experiment with onnxruntime's and scikit-learn's scores of them, for the import to be checked
against.

usage: byo_isolation_forest.py SKAB_DIR OUT_DIR CHANNEL [CHANNEL ...]
"""

import json
import sys

import numpy
import onnxruntime
import pandas
from skl2onnx import to_onnx
from sklearn.ensemble import IsolationForest

skab, out, channels = sys.argv[1], sys.argv[2], sys.argv[3:]
read = lambda name: pandas.read_csv(f"{skab}/{name}", sep=";")[channels].to_numpy(numpy.float32)
train = read("anomaly-free/anomaly-free.csv")
forest = IsolationForest(n_estimators=100, max_samples=256, random_state=42).fit(train)
model = to_onnx(forest, train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
with open(f"{out}/iforest.onnx", "wb") as f:
    f.write(model.SerializeToString())

rows = read("valve1/0.csv")
session = onnxruntime.InferenceSession(f"{out}/iforest.onnx", providers=["CPUExecutionProvider"])
_, decision = session.run(None, {session.get_inputs()[0].name: rows})
json.dump(
    {
        "rows": rows.astype(float).tolist(),
        # decision_function = score_samples - offset_, and score_samples = -2^(-E[h]/c(psi)).
        "onnxruntime_score_samples": (decision.ravel().astype(float) + forest.offset_).tolist(),
        "sklearn_score_samples": forest.score_samples(rows).astype(float).tolist(),
    },
    open(f"{out}/scores.json", "w"),
)
