#!/usr/bin/env python3
"""Every version of one class's model, scored on the same readings: its healthy pumps' whole run.

Usage: impeller demo --dir DIR ... && python3 scripts/demo-versions-rescored.py DIR CLASS [IMPELLER]
  (CLASS as the demo names it, e.g. kestrel-gulf; IMPELLER: the binary, default `impeller`)

In a demo each version of a model alarms only while it runs, so versions are judged on
different hours. This takes each version's model out of its package (DIR/packages, found through
the hub's registry in DIR/hub.db), scores every pump of the class that stayed healthy on the
readings the demo replayed (DIR/fleet/PUMP.csv) with `impeller score --manufacturer`, as the
pump's agent would, and counts the alarms (each run of alarmed frames once) before and after the
class's drift onset (from the ground truth, DIR/fleet/fleet.json). Every alarm here is false.
"""
import io
import json
import sqlite3
import subprocess
import sys
import tarfile
import tempfile

folder, cls = sys.argv[1], sys.argv[2]
binary = sys.argv[3] if len(sys.argv) > 3 else "impeller"
manufacturer, site = cls.split("-", 1)
truth = json.load(open(f"{folder}/fleet/fleet.json"))
pumps = [p for p in truth["pumps"] if p["manufacturer"] == manufacturer and p["site"] == site and not p["faults"]]
onsets = [d["onset_ms"] for p in pumps for d in p["drifts"]]
onset = min(onsets) if onsets else None
db = sqlite3.connect(f"{folder}/hub.db")
versions = db.execute(
    "SELECT v.version, v.parent_version, p.package_sha256 FROM model_versions v JOIN version_packages p "
    "ON p.model = v.model AND p.version = v.version WHERE v.model = ? ORDER BY v.version",
    (cls,),
).fetchall()
when = "no drift" if onset is None else f"drift onset at {(onset - truth['start_ms']) / 3_600_000:.2f} h"
print(f"{cls}: {len(pumps)} healthy pumps, {when}; false alarms (alarm runs) per version, before / after the onset")
with tempfile.TemporaryDirectory() as tmp:
    for version, parent, sha in versions:
        with tarfile.open(f"{folder}/packages/{sha}.pkg") as pkg:
            model = pkg.extractfile("model.json").read()
        path = f"{tmp}/v{version}.json"
        open(path, "wb").write(model)
        before = after = frames = 0
        alarmed_pumps = set()
        for p in pumps:
            out = subprocess.run(
                [binary, "-q", "score", "--model", path, "--data", f"{folder}/fleet/{p['id']}.csv",
                 "--manufacturer", manufacturer],
                check=True, capture_output=True, text=True,
            ).stdout
            last = False
            for line in io.StringIO(out).readlines()[1:]:
                _, ts, _, _, alarm = line.strip().split(",")
                alarm, frames = alarm == "1", frames + 1
                if alarm and not last:
                    alarmed_pumps.add(p["id"])
                    if onset is not None and int(ts) >= onset:
                        after += 1
                    else:
                        before += 1
                last = alarm
        of = f"retrained from {parent}" if parent else "the first"
        print(f"  version {version} ({of}): {before} / {after} in {frames} frames, on {len(alarmed_pumps)} pumps")
