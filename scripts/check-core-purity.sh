#!/usr/bin/env bash
# impeller-core and impeller-sim must stay pure logic: no async runtime, network, database, MQTT
# or HTTP crate in their dependency trees, and no file, network, process, thread, environment or
# clock access in their source. The agent, the hub and the CLI do the I/O around them.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(tokio|async-std|smol|mio|futures|sqlx|rusqlite|libsqlite3-sys|rumqttc|rumqttd|axum|hyper|reqwest|tonic|object_store|tokio-modbus) '
pattern='std::(fs|net|process|thread|env)\b|SystemTime|Instant::now|tokio::|async fn|\.await'
for crate in impeller-core impeller-sim; do
  tree=$(cargo tree -p "$crate" -e normal --prefix none --locked)
  if grep -Eq "$forbidden" <<<"$tree"; then
    echo "$crate must not depend on these (cargo tree -p $crate -e normal):"
    grep -E "$forbidden" <<<"$tree" | sort -u
    exit 1
  fi
  if grep -rnE "$pattern" "crates/$crate/src"; then
    echo "$crate source touches I/O, threads, the environment or the clock (lines above)"
    exit 1
  fi
  echo "$crate: no I/O, async or clock"
done
