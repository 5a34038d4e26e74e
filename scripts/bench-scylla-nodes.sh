#!/usr/bin/env bash
# Benchmark: N tidings nodes (1 or 3) on one CQL node at 127.0.0.1:19042 with one Redis on :6393,
# each with its own data directory; runs tidings-load direct (see docs/benchmarks.md, 2026-12-07).
# usage: scripts/bench-scylla-nodes.sh N [PAIRS] [RATE]   (release build in /work/reltarget)
set -u
n=$1; ks=bench3_${n}_$RANDOM; d=/tmp/b3_$ks; mkdir -p $d
redis-server --bind 127.0.0.1 --port 6393 --save "" --appendonly no >/dev/null 2>&1 &
rpid=$!; sleep 0.5
for s in token-secret node-key; do (umask 077 && head -c 48 /dev/urandom | base64 > $d/$s); done
pids=(); servers=()
for i in $(seq 1 $n); do
  mkdir -p $d/node-$i
  extra=(); [ "$n" -gt 1 ] && extra=(--set cluster.redis_url=redis://127.0.0.1:6393 --set cluster.node_id=node-$i)
  ${BIN_DIR:-/work/reltarget/release}/tidings --listen 127.0.0.$i:18180 --data-dir $d/node-$i --log-level warn \
    --set auth.argon2_memory_kib=1024 --set auth.argon2_iterations=1 \
    --set limits.requests_per_second=100000 --set limits.request_burst=100000 \
    --set auth.attempts_per_minute_per_ip=0 --set limits.user_requests_per_second=100000 --set limits.user_request_burst=100000 \
    --set store.backend=scylla --set store.scylla_nodes=127.0.0.1:19042 --set store.scylla_keyspace=$ks \
    --set store.scylla_replication_factor=1 \
    --set auth.token_secret_file=$d/token-secret --set cluster.node_key_file=$d/node-key "${extra[@]}" > $d/node-$i.log 2>&1 &
  pids+=($!); servers+=(--server 127.0.0.$i:18180 --server-pid $!)
  for t in $(seq 1 90); do curl -sf http://127.0.0.$i:18180/readyz >/dev/null && break; sleep 1; done
done
${BIN_DIR:-/work/reltarget/release}/tidings-load "${servers[@]}" --prefix $ks direct --pairs ${2:-20} --rate ${3:-100} --duration-secs 10 --drain-secs 4 2>&1 | tail -14
kill "${pids[@]}" $rpid; wait 2>/dev/null
