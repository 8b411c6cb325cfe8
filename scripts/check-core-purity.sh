#!/usr/bin/env bash
# impeller-core must stay pure logic: no async runtime, network, database, MQTT or HTTP crate
# in its dependency tree, and no file, network, process, thread, environment or clock access in
# its source. The agent and the hub do the I/O around it.
set -euo pipefail
cd "$(dirname "$0")/.."

tree=$(cargo tree -p impeller-core -e normal --prefix none --locked)
forbidden='^(tokio|async-std|smol|mio|futures|sqlx|rusqlite|libsqlite3-sys|rumqttc|rumqttd|axum|hyper|reqwest|tonic|object_store|tokio-modbus) '
if grep -Eq "$forbidden" <<<"$tree"; then
  echo "impeller-core must not depend on these (cargo tree -p impeller-core -e normal):"
  grep -E "$forbidden" <<<"$tree" | sort -u
  exit 1
fi

pattern='std::(fs|net|process|thread|env)\b|SystemTime|Instant::now|tokio::|async fn|\.await'
if grep -rnE "$pattern" crates/impeller-core/src; then
  echo "impeller-core source touches I/O, threads, the environment or the clock (lines above)"
  exit 1
fi
echo "impeller-core: no I/O, async or clock"
