#!/usr/bin/env bash
# Profiles a release tidings under the peer bench's fan-out, placed as the bench places it.
#
#   loadtest/profile-fanout.sh RATE 'COMMAND'
#
# Starts the server (pinned to CPU 1, the bench's peers/tidings/start.sh) and the bench's load
# generator (CPU 0, 200 rooms x 10 members, 64 B, RATE msg/s for $DUR s, 20 by default), and
# 10 s in runs COMMAND with $SPID set to the server's pid, e.g.
#
#   loadtest/profile-fanout.sh 500 'perf record -F 1999 -g -p $SPID -o /tmp/perf.data -- sleep 8'
#
# Needs the bench copied to $BENCH (default /tmp/bench: cp -r ../shared/bench /tmp/bench) and
# built, and TIDINGS_BIN (default target/release/tidings). Loopback only; bounded in time.
set -euo pipefail
RATE=${1:?usage: profile-fanout.sh RATE COMMAND}; shift
BENCH=${BENCH:-/tmp/bench}
export TIDINGS_BIN=${TIDINGS_BIN:-$PWD/target/release/tidings}
export TIDINGS_EXTRA="--set auth.attempts_per_minute_per_ip=0 --set auth.attempts_per_minute_per_username=0 ${EXTRA:-}"
cd "$BENCH"
taskset -c 1 peers/tidings/start.sh 19150 > /tmp/profile-server.log 2>&1 &
SPID=$!
trap 'kill $SPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/19150) 2>/dev/null && break; sleep 0.2; done
taskset -c 0 target/release/loadgen --adapter tidings --url ws://127.0.0.1:19150 --label tidings \
  --pid server:$SPID --json-out /tmp/profile.jsonl fanout --rooms 200 --members 10 --senders 1 \
  --payload 64 --rate "$RATE" --duration "${DUR:-20}" --drain 3 > /tmp/profile-loadgen.log 2>&1 &
LPID=$!
sleep 10
export SPID
bash -c "$*" || true
wait $LPID || true
grep "^\[tidings\]" /tmp/profile-loadgen.log | tail -1
