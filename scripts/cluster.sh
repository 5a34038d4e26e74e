#!/usr/bin/env bash
# Runs a three-node tidings cluster on this machine with one Redis. Ctrl-C stops everything.
#
# On SQLite (the default): one shared data directory, nodes on 127.0.0.1:8081, :8082 and :8083.
# On ScyllaDB (STORE=scylla): nodes on 127.0.0.1:8080, 127.0.0.2:8080 and 127.0.0.3:8080, each with
# a data directory of its own (they share no file), on the CQL nodes in SCYLLA_NODES; with
# SCYLLA_NODES=start, a three-node CQL cluster from ../shared/cql-node is started for them (on
# 127.0.0.1-3:9042, data under $DATA/cql) with replication 3.
#
#   scripts/cluster.sh                  # uses Redis on 127.0.0.1:6379 (or starts one on :6390)
#   REDIS_URL=redis://host:port scripts/cluster.sh
#   BIN=target/release/tidings DATA=/tmp/tidings-cluster scripts/cluster.sh
#   STORE=scylla SCYLLA_NODES=127.0.0.1:9042 REPLICATION=1 scripts/cluster.sh
#   STORE=scylla SCYLLA_NODES=start scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/tidings}
DATA=${DATA:-./data-cluster}
REDIS_URL=${REDIS_URL:-}
STORE=${STORE:-sqlite}
SCYLLA_NODES=${SCYLLA_NODES:-127.0.0.1:9042}
REPLICATION=${REPLICATION:-3}
CQL_HOME=${CQL_HOME:-../shared/cql-node}
pids=()
cql_base=

cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$cql_base" ]; then "$CQL_HOME/cluster.sh" down "$cql_base" || true; fi
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
if [ "$STORE" = sqlite ]; then
    for n in 1 2 3; do
        "$BIN" --listen "127.0.0.1:808$n" --data-dir "$DATA" \
            --set cluster.redis_url="$REDIS_URL" --set cluster.node_id="node-$n" &
        pids+=($!)
    done
    echo
    echo "three nodes on one Redis ($REDIS_URL) and one store ($DATA):"
    echo "  ws://127.0.0.1:8081/v1/ws  ws://127.0.0.1:8082/v1/ws  ws://127.0.0.1:8083/v1/ws"
else
    if [ "$SCYLLA_NODES" = start ]; then
        cql_base="$DATA/cql"
        echo "starting a three-node CQL cluster from $CQL_HOME (about 30 s) ..."
        "$CQL_HOME/cluster.sh" up 3 9042 "$cql_base" | tail -1
        SCYLLA_NODES=127.0.0.1:9042,127.0.0.2:9042,127.0.0.3:9042
    fi
    # Nodes that share no file still share their secrets: made once here, read from files.
    for secret in token-secret node-key; do
        [ -s "$DATA/$secret" ] || (umask 077 && head -c 48 /dev/urandom | base64 > "$DATA/$secret")
    done
    for n in 1 2 3; do
        mkdir -p "$DATA/node-$n"
        "$BIN" --listen "127.0.0.$n:8080" --data-dir "$DATA/node-$n" \
            --set store.backend=scylla --set store.scylla_nodes="$SCYLLA_NODES" \
            --set store.scylla_replication_factor="$REPLICATION" \
            --set auth.token_secret_file="$DATA/token-secret" --set cluster.node_key_file="$DATA/node-key" \
            --set cluster.redis_url="$REDIS_URL" --set cluster.node_id="node-$n" &
        pids+=($!)
        # The first node creates the keyspace; the others find it.
        [ "$n" = 1 ] && sleep 5
    done
    echo
    echo "three nodes sharing no file, on one Redis ($REDIS_URL) and ScyllaDB ($SCYLLA_NODES):"
    echo "  ws://127.0.0.1:8080/v1/ws  ws://127.0.0.2:8080/v1/ws  ws://127.0.0.3:8080/v1/ws"
fi
echo "Ctrl-C stops them."
wait
