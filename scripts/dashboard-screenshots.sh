#!/usr/bin/env bash
# Screenshots of every dashboard page, from a demo run on embedded defaults: runs
# `impeller demo --stay`, opens the link it prints in headless Chromium (Debian's chromium and
# chromium-driver, Selenium from crates/impeller-hub/tests/peers/requirements.txt), saves one
# PNG per page, confirms one alert through the page, then stops the demo.
#   scripts/dashboard-screenshots.sh [OUT_DIR]   (default: target/screenshots)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/screenshots}"
# IMPELLER_BIN: an impeller binary already built; else a release build.
bin="${IMPELLER_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked -q -p impeller
  bin="${CARGO_TARGET_DIR:-target}/release/impeller"
fi
log=$(mktemp)
"$bin" demo --stay >"$log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
until grep -q "The hub stays up" "$log"; do
  if ! kill -0 "$pid" 2>/dev/null; then cat "$log"; echo "the demo stopped before its summary" >&2; exit 1; fi
  sleep 1
done
link=$(grep -o 'http://[^ ]*/#token=[^ ]*' "$log" | tail -1)
base=${link%%/#token=*}
token=${link##*#token=}
# The busiest device's newest alert, confirmed through the page.
device=$(curl -sf -H "Authorization: Bearer $token" "$base/api/v1/fleet?limit=1000" | python3 -c '
import json, sys
fleet = json.load(sys.stdin)["items"]
d = max(fleet, key=lambda d: (d["alerts"], d["id"]))
print(d["id"])')
alerts=$(curl -sf -H "Authorization: Bearer $token" "$base/api/v1/alerts?device=$device&limit=1000" | python3 -c '
import json, sys; items = json.load(sys.stdin)["items"]; print(items[-1]["seq"] if items else "")')
args=(--url "$base" --token "$token" --device "$device" --screenshots "$out")
if [ -n "$alerts" ]; then args+=(--confirm-alert "$alerts"); fi
python3 crates/impeller-hub/tests/peers/dashboard_check.py "${args[@]}"
echo "screenshots in $out"
