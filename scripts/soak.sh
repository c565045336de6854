#!/usr/bin/env bash
# Soak: DURATION seconds (default 600) of steady traffic through the whole
# loop: the release api serving recommendations to `marquee-tools simulate`'s
# sessions (CONCURRENCY, default 4) and producing impressions, clicks sent
# half through POST /v1/events and half straight to Kafka, the release worker
# ingesting them. Every 30 s it samples the api's and the worker's resident
# memory; at the end it waits for the worker to catch up and prints sent
# against counted (distinct event ids in ClickHouse, and rows after FINAL)
# and the RSS series. Everything runs in its own slice (PostgreSQL and
# ClickHouse databases, Redis namespace, bucket, and a scratch Kafka broker on
# SOAK_KAFKA_PORT, default 59194, with a store of its own, as bench-ingest.sh
# does: Tansu's store does not give space back), dropped at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-600}"
CONCURRENCY="${CONCURRENCY:-4}"
SIZE="${SIZE:-small}"
ID="soak$(date +%s)"
API_PORT="${SOAK_API_PORT:-18280}"
started_at=$(date +%s)
say() { echo "== [+$(( $(date +%s) - started_at ))s] $*"; }

scripts/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
psql -q "$MARQUEE_DATABASE_URL" -c "CREATE DATABASE $ID" >/dev/null
BASE_DB_URL="$MARQUEE_DATABASE_URL"
export MARQUEE_DATABASE_URL="${MARQUEE_DATABASE_URL%/*}/$ID"
export MARQUEE_CLICKHOUSE_DATABASE="$ID" MARQUEE_EVENTS_TOPIC="marquee.events.$ID" MARQUEE_DLQ_TOPIC="marquee.events.dlq.$ID"
export MARQUEE_REDIS_NAMESPACE="$ID:" MARQUEE_S3_BUCKET="$ID" MARQUEE_WORKER_GROUP="$ID"
export MARQUEE_API_PORT="$API_PORT" MARQUEE_WORKER_METRICS_PORT="${SOAK_WORKER_METRICS_PORT:-19291}"
export MARQUEE_BOOTSTRAP_ADMIN_KEY="mq_admin_soak_$ID" RUST_LOG=warn
API="http://127.0.0.1:$API_PORT"
LOGS="$(mktemp -d)"
pids=()
soak_broker_dir="$ROOT/.stack/soak-broker"
soak_broker() { MARQUEE_STACK_DIR="$soak_broker_dir" MARQUEE_KAFKA_PORT="${SOAK_KAFKA_PORT:-59194}" scripts/stack.sh "$@"; }
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  soak_broker kafka-down >/dev/null 2>&1 || true
  rm -rf "$soak_broker_dir"
  curl -fsS "$MARQUEE_CLICKHOUSE_URL/" --data-binary "DROP DATABASE IF EXISTS $ID" >/dev/null 2>&1 || true
  psql -q "$BASE_DB_URL" -c "DROP DATABASE IF EXISTS $ID" >/dev/null 2>&1 || true
  redis-cli -u "$MARQUEE_REDIS_URL" --scan --pattern "$ID:*" 2>/dev/null | xargs -r -n 500 redis-cli -u "$MARQUEE_REDIS_URL" del >/dev/null 2>&1 || true
  rm -rf "$LOGS"
}
trap cleanup EXIT
soak_broker kafka-down >/dev/null 2>&1 || true
rm -rf "$soak_broker_dir"
soak_broker kafka-up >/dev/null
export MARQUEE_KAFKA_BROKERS="127.0.0.1:${SOAK_KAFKA_PORT:-59194}"

say "building api and worker (release)"
cargo build --release --locked -p marquee-api -p marquee-worker >"$LOGS/build.log" 2>&1 || { tail -30 "$LOGS/build.log"; exit 1; }
BIN="$ROOT/target/release"
say "migrating, seeding the $SIZE catalog, training popularity, item-kNN and ALS"
"$BIN/api" migrate >/dev/null
"$BIN/marquee-tools" seed --size "$SIZE" --seed 42 >/dev/null
for algorithm in popularity item_knn als; do "$BIN/worker" train --algorithm "$algorithm" >/dev/null; done

"$BIN/worker" run >"$LOGS/worker.log" 2>&1 &
worker_pid=$!; pids+=("$worker_pid")
"$BIN/api" serve >"$LOGS/api.log" 2>&1 &
api_pid=$!; pids+=("$api_pid")
for _ in $(seq 1 300); do curl -fsS "$API/health/ready" >/dev/null 2>&1 && break; sleep 0.2; done
admin() { curl -fsS -H "x-api-key: $MARQUEE_BOOTSTRAP_ADMIN_KEY" -H 'content-type: application/json' "$@"; }
admin -X POST "$API/v1/experiments" -d '{
  "key": "home", "description": "soak", "policy": "thompson", "metric": "ctr", "min_weight": 0.05,
  "reweight_interval_s": 10, "bandit": {"burn_in_users": 50, "exploration_s": 15},
  "arms": [
    {"key": "popularity", "algorithm": "popularity", "weight": 0.34, "is_control": true},
    {"key": "item_knn", "algorithm": "item_knn", "weight": 0.33, "is_control": false},
    {"key": "als", "algorithm": "als", "weight": 0.33, "is_control": false}]}' >/dev/null
admin -X POST "$API/v1/experiments/home/start" >/dev/null
CLIENT_KEY="$("$BIN/api" keys create --role client --name soak | tail -1)"

ch() { curl -fsS "$MARQUEE_CLICKHOUSE_URL/?database=$ID" --data-binary "$1"; }
# The seed's history is in ClickHouse already; the soak counts what comes after.
seeded="$(ch "SELECT uniqExact(event_id) FROM events")"

rss() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo "-"; }
lag() { curl -fsS "http://127.0.0.1:$MARQUEE_WORKER_METRICS_PORT/metrics" 2>/dev/null | awk '$1 ~ /^marquee_worker_consumer_lag/ {s += $2} END {printf "%d", s}'; }
(
  while kill -0 "$api_pid" 2>/dev/null; do
    echo "$(( $(date +%s) - started_at )) $(rss "$api_pid") $(rss "$worker_pid") $(lag)"
    sleep 30
  done
) >"$LOGS/rss.txt" &
pids+=($!)

say "simulating ${DURATION}s of traffic ($CONCURRENCY sessions)"
"$BIN/marquee-tools" simulate --client-key "$CLIENT_KEY" --api-url "$API" --experiment home \
  --seconds "$DURATION" --size "$SIZE" --seed 42 --concurrency "$CONCURRENCY" | tee "$LOGS/simulate.txt" | head -1
read -r requests failed via_api via_kafka < <(sed -n '1s/^simulated \([0-9]*\) requests (\([0-9]*\) failed); clicks sent: \([0-9]*\) via POST \/v1\/events, \([0-9]*\) straight to Kafka$/\1 \2 \3 \4/p' "$LOGS/simulate.txt")

metric() { curl -fsS "$1" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'; }
impressions="$(metric "$API/metrics" marquee_impressions_sent_total)"
dropped="$(metric "$API/metrics" marquee_impressions_dropped_total)"
expected=$(( seeded + impressions + via_api + via_kafka ))
say "waiting for the worker to ingest the last events (expecting $expected)"
last=-1; same=0
for _ in $(seq 1 120); do
  now_count="$(ch "SELECT uniqExact(event_id) FROM events")"
  [ "$now_count" -ge "$expected" ] && break
  if [ "$now_count" = "$last" ]; then same=$((same + 1)); [ $same -ge 10 ] && break; else same=0; fi
  last="$now_count"; sleep 2
done
distinct="$(ch "SELECT uniqExact(event_id) FROM events")"
rows="$(ch "SELECT count() FROM events FINAL")"
raw="$(ch "SELECT count() FROM events")"
echo "$(( $(date +%s) - started_at )) $(rss "$api_pid") $(rss "$worker_pid") $(lag)" >>"$LOGS/rss.txt"

echo
printf '%-44s %12s\n' "sent / counted" "events"
printf '%-44s %12s\n' "seeded history (before the traffic)" "$seeded"
printf '%-44s %12s\n' "recommendation requests (failed: $failed)" "$requests"
printf '%-44s %12s\n' "impressions produced by the api (dropped: $dropped)" "$impressions"
printf '%-44s %12s\n' "clicks via POST /v1/events" "$via_api"
printf '%-44s %12s\n' "clicks straight to Kafka" "$via_kafka"
printf '%-44s %12s\n' "expected in ClickHouse" "$expected"
printf '%-44s %12s\n' "distinct event ids in ClickHouse" "$distinct"
printf '%-44s %12s\n' "rows after FINAL (raw rows: $raw)" "$rows"
echo
echo "samples (seconds since start, api RSS MiB, worker RSS MiB, worker consumer lag):"
awk '{printf "  %6s s %6s %6s %8s\n", $1, $2, $3, $4}' "$LOGS/rss.txt"
verdict=PASS
[ "$distinct" = "$expected" ] && [ "$rows" = "$expected" ] || verdict=FAIL
echo "$verdict: $expected sent, $distinct counted once ($rows after FINAL) over ${DURATION}s"
[ "$verdict" = PASS ]
