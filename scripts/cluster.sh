#!/usr/bin/env bash
# Runs a three-node tidings cluster on this machine: one Redis, one shared data directory, nodes on
# 127.0.0.1:8081, :8082 and :8083. Ctrl-C stops everything.
#
#   scripts/cluster.sh                  # uses Redis on 127.0.0.1:6379 (or starts one on :6390)
#   REDIS_URL=redis://host:port scripts/cluster.sh
#   BIN=target/release/tidings DATA=/tmp/tidings-cluster scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/tidings}
DATA=${DATA:-./data-cluster}
REDIS_URL=${REDIS_URL:-}
pids=()

cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

if [ ! -x "$BIN" ]; then
    echo "building $BIN ..."
    cargo build --release -p tidings
fi

if [ -z "$REDIS_URL" ]; then
    if redis-cli -p 6379 ping >/dev/null 2>&1; then
        REDIS_URL=redis://127.0.0.1:6379
    else
        echo "starting redis-server on 127.0.0.1:6390"
        redis-server --bind 127.0.0.1 --port 6390 --save "" --appendonly no >/dev/null &
        pids+=($!)
        REDIS_URL=redis://127.0.0.1:6390
        sleep 0.5
    fi
fi

mkdir -p "$DATA"
for n in 1 2 3; do
    "$BIN" --listen "127.0.0.1:808$n" --data-dir "$DATA" \
        --set cluster.redis_url="$REDIS_URL" --set cluster.node_id="node-$n" &
    pids+=($!)
done

echo
echo "three nodes on one Redis ($REDIS_URL) and one store ($DATA):"
echo "  ws://127.0.0.1:8081/v1/ws  ws://127.0.0.1:8082/v1/ws  ws://127.0.0.1:8083/v1/ws"
echo "Ctrl-C stops them."
wait
