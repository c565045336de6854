#!/usr/bin/env bash
# Ingestion throughput: produce EVENTS (1M) valid events to a fresh topic, then
#  1. read them raw with a plain rdkafka consumer (`marquee-tools bench-consume`), the
#     ceiling any consumer can reach on this broker and machine;
#  2. run the release worker on them and measure how fast they become visible
#     in ClickHouse (ledger in PostgreSQL, dedup/attribution in Redis, one
#     ClickHouse insert per batch, offsets committed after each).
# Both rates are first-to-last (the worker's also from process start), with
# their ratio and the worker's peak RSS from /usr/bin/time -v.
# Everything runs in its own slice (PostgreSQL and ClickHouse databases,
# Redis namespace, bucket, and a scratch Kafka broker on BENCH_KAFKA_PORT,
# default 59193, with a store of its own), all dropped at the end: Tansu's
# store does not give space back for a deleted topic, so a million events per
# run on the shared broker would grow it, and slow it, for good.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EVENTS="${EVENTS:-1000000}"
PARTITIONS="${PARTITIONS:-4}"
BATCH="${BATCH:-20000}"
ID="bench$(date +%s)"

scripts/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
if [ ! -x /usr/bin/time ]; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq time >/dev/null
fi

echo "[bench] building the release worker"
cargo build --release --locked -p marquee-api -p marquee-worker >/dev/null 2>&1 || cargo build --release --locked -p marquee-api -p marquee-worker
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/worker"
TOOLS="${CARGO_TARGET_DIR:-$ROOT/target}/release/marquee-tools"

base_db="${MARQUEE_DATABASE_URL%/*}"
admin_db="$MARQUEE_DATABASE_URL"
export MARQUEE_DATABASE_URL="$base_db/$ID"
export MARQUEE_CLICKHOUSE_DATABASE="$ID"
export MARQUEE_EVENTS_TOPIC="marquee.bench.$ID"
export MARQUEE_DLQ_TOPIC="marquee.bench.dlq.$ID"
export MARQUEE_EVENTS_PARTITIONS="$PARTITIONS"
export MARQUEE_REDIS_NAMESPACE="$ID:"
export MARQUEE_S3_BUCKET="$ID"
export MARQUEE_WORKER_GROUP="bench-worker-$ID"
export MARQUEE_WORKER_METRICS_PORT=0
export MARQUEE_WORKER_BATCH_SIZE="$BATCH"
export MARQUEE_WORKER_BATCH_MAX_WAIT_MS=200
export RUST_LOG="${RUST_LOG:-warn,marquee_worker=info}"

ch() { curl -fsS "$MARQUEE_CLICKHOUSE_URL/" --data-binary "$1"; }
psql_admin() { python3 - "$admin_db" "$1" <<'PY'
import subprocess, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
env = {"PGPASSWORD": u.password or "", "PATH": "/usr/bin:/bin"}
subprocess.run(["psql", "-q", "-h", u.hostname, "-p", str(u.port), "-U", u.username, "-d", u.path.lstrip("/"), "-c", sys.argv[2]], check=True, env=env)
PY
}
# /usr/bin/time does not pass signals on: stop the worker it runs (its child, by pid).
stop_worker() {
  local child
  child="$(pgrep -P "$worker_pid" || true)"
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  wait "$worker_pid" 2>/dev/null || true
}
bench_broker_dir="$ROOT/.stack/bench-ingest-broker"
bench_broker() { MARQUEE_STACK_DIR="$bench_broker_dir" MARQUEE_KAFKA_PORT="${BENCH_KAFKA_PORT:-59193}" scripts/stack.sh "$@"; }
cleanup() {
  [ -n "${worker_pid:-}" ] && stop_worker
  ch "DROP DATABASE IF EXISTS $ID" >/dev/null 2>&1 || true
  psql_admin "DROP DATABASE IF EXISTS \"$ID\"" >/dev/null 2>&1 || true
  bench_broker kafka-down >/dev/null 2>&1 || true
  rm -rf "$bench_broker_dir"
}
trap cleanup EXIT
bench_broker kafka-down >/dev/null 2>&1 || true
rm -rf "$bench_broker_dir"
bench_broker kafka-up
export MARQUEE_KAFKA_BROKERS="127.0.0.1:${BENCH_KAFKA_PORT:-59193}"

psql_admin "CREATE DATABASE \"$ID\""
"$BIN" migrate >/dev/null

echo "[bench] producing $EVENTS events to $MARQUEE_EVENTS_TOPIC ($PARTITIONS partitions)"
"$TOOLS" bench-produce --count "$EVENTS"

echo "[bench] raw read by a plain rdkafka consumer"
raw_json="$("$TOOLS" bench-consume --count "$EVENTS")"
echo "$raw_json"
raw_rate="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["rate"])' "$raw_json")"

echo "[bench] worker (release, batch $BATCH) until $EVENTS events are visible in ClickHouse"
log="$(mktemp)"
started=$(date +%s.%N)
/usr/bin/time -v "$BIN" run >"$log" 2>&1 &
worker_pid=$!
first=""
set +e # a failed probe (ClickHouse busy) must not end the measurement
while :; do
  n="$(ch "SELECT count() FROM $ID.events" 2>/dev/null || echo 0)"
  now=$(date +%s.%N)
  if [ -z "$first" ] && [ "${n:-0}" -gt 0 ]; then first=$now; first_n=$n; fi
  [ "${n:-0}" -ge "$EVENTS" ] && break
  if ! kill -0 "$worker_pid" 2>/dev/null; then tail -30 "$log"; echo "worker died" >&2; exit 1; fi
  if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) - float(sys.argv[2]) > 900 else 1)" "$now" "$started"; then
    tail -30 "$log"; echo "timed out with $n events" >&2; exit 1
  fi
  sleep 0.2
done
done_at=$(date +%s.%N)
set -e
stop_worker
worker_pid=""
rss_kb="$(awk '/Maximum resident set size/ {print $NF}' "$log")"
[ -n "$rss_kb" ] || { tail -20 "$log"; echo "no RSS report from /usr/bin/time" >&2; exit 1; }
unique="$(ch "SELECT uniqExact(event_id) FROM $ID.events")"

python3 - "$EVENTS" "$started" "$first" "$first_n" "$done_at" "$raw_rate" "$rss_kb" "$unique" <<'PY'
import sys
events, started, first, first_n, done, raw, rss, unique = sys.argv[1:]
events, started, first, first_n, done, raw = int(events), float(started), float(first), int(first_n), float(done), float(raw)
steady = (events - first_n) / max(done - first, 1e-9)
whole = events / (done - started)
print(f"events in ClickHouse:  {unique} unique of {events}")
print(f"raw rdkafka read:      {raw:,.0f} events/s")
print(f"worker to ClickHouse:  {steady:,.0f} events/s first-to-last ({whole:,.0f}/s from process start, {done - started:.1f} s)")
print(f"ratio worker / raw:    {steady / raw:.2f}")
print(f"worker peak RSS:       {int(rss) / 1024:.0f} MiB")
PY
