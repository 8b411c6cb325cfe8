#!/usr/bin/env bash
# Memory and CPU of the edge agent with a model loaded, 8 channels at 100 Hz, outbox active
# (aggregates, sketches, raw samples and alerts written and published; nobody acknowledges, so
# the outbox only grows), and the stripped binary size.
#
#   scripts/bench-edge-footprint.sh [SKAB_DIR] [BROKER] [csv|mqtt] [SHADOW_READINGS]
#
# PROFILE=release (default) or PROFILE=edge (the size-optimised profile gateways get) picks
# the agent's build; EDGE_BIN=PATH measures that agent binary instead (an older build, to
# compare in the same session).
#
# SHADOW_READINGS overrides [models] shadow_readings (default 1200), to see what the
# shadow-scoring buffer costs.
#
# Source csv (default): replays SKAB's anomaly-free recording (8 channels, one row per second)
# at 100x speed = 100 Hz. Source mqtt: a third-party publisher (scripts/publish-readings.py,
# needs paho-mqtt) sends the same rows at 100 Hz to BROKER, one MQTT message per reading or
# BATCH=N readings per message (a JSON array, every N/100 s), and the agent subscribes.
# After 10 s of warm-up, measures 60 s from /proc: resident memory
# (now and peak) and CPU time of the agent alone.
set -euo pipefail
cd "$(dirname "$0")/.."
skab="${1:-../shared/datasets/skab}"
broker="${2:-mqtt://127.0.0.1:1883}"
source="${3:-csv}"
shadow="${4:-1200}"
profile="${PROFILE:-release}"
cargo build --release -p impeller >/dev/null 2>&1
[ -n "${EDGE_BIN:-}" ] || cargo build --profile "$profile" -p impeller-edge >/dev/null 2>&1
target="${CARGO_TARGET_DIR:-target}"
impeller=$target/release/impeller
edge=${EDGE_BIN:-$target/$profile/impeller-edge}
work=$(mktemp -d)
# Only the pids that were set: `kill 0` would signal this whole process group, the caller too.
trap 'for p in ${pid:-} ${pub:-}; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

$impeller -q keys generate --name ops --out "$work" >/dev/null
$impeller -q train --data "$skab/anomaly-free/anomaly-free.csv" --rows 400 --out "$work/m.json" >/dev/null
$impeller -q package build --model "$work/m.json" --data "$skab/anomaly-free/anomaly-free.csv" --rows 400 \
  --key "$work/ops.secret.json" --name bench --model-version 1.0.0 --release 1 --target bench --out "$work/p.tar.gz" >/dev/null
cat > "$work/edge.toml" <<TOML
version = 1
[device]
id = "bench-footprint"
target = "bench"
data_dir = "$work/data"
[hub]
broker = "$broker"
# Set, so the update client is built as on a real device; nothing listens there.
api = "http://127.0.0.1:9"
[models]
trusted_keys = ["$work/ops.public.json"]
shadow_readings = $shadow
[outbox]
[uplink]
aggregate_interval_s = 60
sketch_interval_s = 600
raw_every = 10
raw_batch = 60
[metrics]
listen = ""
TOML
if [ "$source" = mqtt ]; then
  hostport=${broker#mqtt://}
  topic="bench/footprint/readings"
  printf '[source]\nkind = "mqtt"\nbroker = "%s"\ntopic = "%s"\n' "$broker" "$topic" >> "$work/edge.toml"
  python3 scripts/publish-readings.py "$skab/anomaly-free/anomaly-free.csv" "${hostport%:*}" "${hostport##*:}" "$topic" 100 "${BATCH:-1}" &
  pub=$!
else
  printf '[source]\nkind = "csv"\npath = "%s"\nspeed = 100\n' "$skab/anomaly-free/anomaly-free.csv" >> "$work/edge.toml"
fi
$edge -q install --config "$work/edge.toml" "$work/p.tar.gz" >/dev/null
$edge -q run --config "$work/edge.toml" &
pid=$!
sleep 10
ticks=$(getconf CLK_TCK)
cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
t0=$(date +%s.%N)
sleep ${MEASURE_S:-60}
cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
# Where the resident pages are: per mapping (the agent's code, heap, libraries), from smaps.
where=$(awk -v exe="$(readlink -f "$edge")" '
  /^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "") ? "other anonymous" : ($6 == exe ? "agent code and data" : $6) }
  /^Rss:/ { rss[name] += $2 }
  END { for (n in rss) if (rss[n] >= 100) printf "  %5.1f MiB  %s\n", rss[n]/1024, n }' "/proc/$pid/smaps" | sort -rn)
kill "$pid"; wait "$pid" 2>/dev/null || true
cp "$edge" "$work/edge-stripped"; strip "$work/edge-stripped"
size=$(stat -c %s "$work/edge-stripped")
awk -v c0="$cpu0" -v c1="$cpu1" -v t0="$t0" -v t1="$t1" -v hz="$ticks" -v rss="$rss" -v hwm="$hwm" -v size="$size" -v src="$source${BATCH:+, $BATCH readings per message}" 'BEGIN {
  printf "resident memory: %.1f MiB now, %.1f MiB peak\n", rss/1024, hwm/1024
  printf "cpu: %.2f %% of one core over %.0f s (8 channels at 100 Hz, source %s)\n", 100*(c1-c0)/hz/(t1-t0), t1-t0, src
  printf "stripped binary: %.1f MiB\n", size/1048576
}'
echo "resident by mapping:"
echo "$where"
