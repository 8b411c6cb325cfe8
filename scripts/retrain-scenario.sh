#!/usr/bin/env bash
# Issue 6's scenario at a chosen scale: the demo with a heat wave at gulf (drift that is not a
# fault), then the same fleet with none (the control), each printing its retraining line: how
# long from the heat wave's onset to the retrained versions on all their devices, and whether
# the control run retrained anything (a false trigger).
# It also prints the precision line: technicians' verdicts on the first and the retrained versions.
#   scripts/retrain-scenario.sh [PUMPS] [TRAIN_HOURS] [SPEED]   (default 24 pumps, 48 h of history, 360×)
set -euo pipefail
cd "$(dirname "$0")/.."
pumps="${1:-24}"
train_hours="${2:-48}"
speed="${3:-360}"
bin="${IMPELLER_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked -q -p impeller
  bin="${CARGO_TARGET_DIR:-target}/release/impeller"
fi
failed=0
for run in drift control; do
  flags=()
  if [ "$run" = control ]; then flags+=(--no-drift); fi
  start=$(date +%s)
  # A failed run (a rollout that did not complete) still prints its summary; the control runs anyway.
  status=0
  out=$("$bin" demo --pumps "$pumps" --train-hours "$train_hours" --speed "$speed" "${flags[@]}" 2>&1) || status=$?
  echo "== $run run: $pumps pumps at ${speed}×, $(( $(date +%s) - start )) s, exit status $status"
  if [ "$status" -ne 0 ]; then failed=1; echo "$out" | tail -3; fi
  echo "$out" | grep -E '^([a-z_]+ +[0-9]+ +[0-9]+ |(false alarms|rollouts|alert precision|technician|retraining|class drift)[a-z -]*[:(]|  [a-z-]+ \(.*first device in drift)'
done
exit "$failed"
