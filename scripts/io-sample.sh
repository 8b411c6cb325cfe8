#!/usr/bin/env bash
# Where a running hub's disk writes go, every INTERVAL seconds until stopped (Ctrl-C): the
# disk's write throughput and write requests per second (/proc/diskstats: many small requests
# are random pages, few large ones are sequential), the page cache's dirty data, and the sizes
# of the hub's SQLite log and database file. Linux only. Run beside `impeller bench load`:
#   scripts/io-sample.sh [DISK] [INTERVAL]      (default: the disk holding /tmp, every 2 s)
set -euo pipefail
source=$(df --output=source /tmp | tail -1)
disk="${1:-$(lsblk -ndo PKNAME "$source" 2>/dev/null || true)}"
disk="${disk:-$(basename "$source")}"
interval="${2:-2}"
read_disk() { awk -v d="$disk" '$3 == d { print $10, $8 }' /proc/diskstats; }
echo "disk $disk, every $interval s: seconds, MB/s written, write requests/s, dirty MB, the hub's log and database in MB"
read -r sectors requests < <(read_disk)
start=$(date +%s.%N)
while sleep "$interval"; do
  read -r sectors_now requests_now < <(read_disk)
  dirty_kb=$(awk '/^Dirty:/ { print $2 }' /proc/meminfo)
  hub=$(pgrep -f 'impeller hub' | head -1 || true)
  wal=$( [ -n "$hub" ] && find "/proc/$hub/fd" -lname '*-wal' -printf '%l\n' 2>/dev/null | head -1 || true)
  sizes="-"
  if [ -n "$wal" ] && [ -f "$wal" ]; then
    sizes="$(( $(stat -c %s "$wal") >> 20 )) $(( $(stat -c %s "${wal%-wal}") >> 20 ))"
  fi
  awk -v t="$(date +%s.%N)" -v t0="$start" -v s=$(( sectors_now - sectors )) \
      -v r=$(( requests_now - requests )) -v i="$interval" -v d="$dirty_kb" -v z="$sizes" \
      'BEGIN { printf "%6.1f %6.0f %7.0f %6.0f %s\n", t - t0, s * 512 / i / 1e6, r / i, d / 1024, z }'
  sectors=$sectors_now requests=$requests_now
done
