#!/usr/bin/env bash
# Results latency at scale: an experiment with 10M events (EVENTS) spread over
# USERS users, 3 arms and 14 days, written into ClickHouse's `events` table so
# the materialized views aggregate them exactly as the worker's inserts would.
# Its weights changed twice (three weight periods), so the results use the
# cohort method: every user's first exposure joined to their sums, grouped
# by period. Then the release api answers GET /v1/experiments/bench/results
# REQUESTS times, over each user's whole exposure and again with a 7-day
# outcome window; /health/live in the same script is the baseline. Prints
# median and p95 of each (curl per request, so the baseline includes curl's
# own start-up), the ratio, and the api's peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EVENTS="${EVENTS:-10000000}"
USERS="${USERS:-200000}"
REQUESTS="${REQUESTS:-50}"
PORT="${BENCH_PORT:-18080}"
DB="bench_results"

scripts/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
export MARQUEE_CLICKHOUSE_DATABASE="$DB" MARQUEE_API_PORT="$PORT" MARQUEE_BOOTSTRAP_ADMIN_KEY="bench-admin-key"
export MARQUEE_REDIS_NAMESPACE="bench:" RUST_LOG=warn
# A PostgreSQL database of its own too: the `bench` experiment must not show
# up among the demo's experiments in the main one.
if ! psql -qAt "$MARQUEE_DATABASE_URL" -c "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  psql -q "$MARQUEE_DATABASE_URL" -c "CREATE DATABASE $DB" >/dev/null
fi
export MARQUEE_DATABASE_URL="${MARQUEE_DATABASE_URL%/*}/$DB"
# api and worker together, as scripts/demo.sh builds them: the same feature set, so the
# demo's release build is reused instead of rebuilding dependencies for the api alone.
cargo build --release --locked -p marquee-api -p marquee-worker >/dev/null 2>&1
target/release/api migrate >/dev/null

ch() { curl -fsS "$MARQUEE_CLICKHOUSE_URL/?database=$DB" --data-binary "$1"; }
psql_() { psql -q "$MARQUEE_DATABASE_URL" -v ON_ERROR_STOP=1 -c "$1" >/dev/null; }

psql_ "DELETE FROM experiments WHERE key = 'bench'"
psql_ "INSERT INTO experiments (key, status, salt, policy, metric, started_at) VALUES ('bench', 'running', 'bench', 'thompson', 'ctr', now() - interval '14 days')"
psql_ "INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) VALUES
  ('bench', 'popularity', 'popularity', 0.34, true, 0), ('bench', 'item_knn', 'item_knn', 0.33, false, 1), ('bench', 'als', 'als', 0.33, false, 2)"
# Three weight periods: the start, and two reweights.
psql_ "INSERT INTO weight_history (experiment_key, arm_key, weight, reason, computed_at) VALUES
  ('bench', 'popularity', 0.34, 'start', now() - interval '14 days'), ('bench', 'item_knn', 0.33, 'start', now() - interval '14 days'),
  ('bench', 'als', 0.33, 'start', now() - interval '14 days'),
  ('bench', 'popularity', 0.2, 'thompson', now() - interval '10 days'), ('bench', 'item_knn', 0.4, 'thompson', now() - interval '10 days'),
  ('bench', 'als', 0.4, 'thompson', now() - interval '10 days'),
  ('bench', 'popularity', 0.1, 'thompson', now() - interval '5 days'), ('bench', 'item_knn', 0.45, 'thompson', now() - interval '5 days'),
  ('bench', 'als', 0.45, 'thompson', now() - interval '5 days')"

existing="$(ch "SELECT count() FROM events WHERE experiment_key = 'bench'")"
per_user_rows="$(ch "SELECT count() FROM arm_user")"
first_rows="$(ch "SELECT count() FROM arm_user_first")"
cohort_rows="$(ch "SELECT count() FROM arm_user_cohort")"
if [ "$existing" != "$EVENTS" ] || [ "$per_user_rows" = 0 ] || [ "$first_rows" = 0 ] || [ "$cohort_rows" = 0 ]; then
  echo "[bench] writing $EVENTS events for $USERS users into ClickHouse (through the materialized views)"
  for t in events arm_daily arm_user arm_user_daily arm_user_first arm_user_cohort arm_position_daily movie_hourly; do ch "TRUNCATE TABLE $t"; done
  started=$(date +%s.%N)
  # 80% impressions, 12% clicks (position 0-9), 5% views, 2% likes, 1% conversions; arm = user % 3.
  ch "INSERT INTO events (event_id, ts, type, user_id, movie_id, experiment_key, arm_key, algorithm_key, model_version, request_id, position, value, item_count, batch_id, ingested_at)
      SELECT generateUUIDv4(), toDateTime(now() - intDiv(number, 8) % (14 * 86400)),
             multiIf(number % 100 < 80, 'impression', number % 100 < 92, 'click', number % 100 < 97, 'view', number % 100 < 99, 'like', 'conversion'),
             concat('u', toString(cityHash64(number) % $USERS)),
             if(number % 100 < 80, 0, 1 + number % 2000), 'bench',
             arrayElement(['popularity', 'item_knn', 'als'], 1 + (cityHash64(number) % $USERS) % 3),
             arrayElement(['popularity', 'item_knn', 'als'], 1 + (cityHash64(number) % $USERS) % 3),
             '', '', toInt16(if(number % 100 >= 80 AND number % 100 < 92, number % 10, -1)),
             if(number % 100 >= 92 AND number % 100 < 97, 30., 0.), 10, generateUUIDv4(), now()
      FROM numbers($EVENTS)"
  ch "OPTIMIZE TABLE arm_user FINAL"
  ch "OPTIMIZE TABLE arm_user_daily FINAL"
  ch "OPTIMIZE TABLE arm_daily FINAL"
  ch "OPTIMIZE TABLE arm_user_first FINAL"
  ch "OPTIMIZE TABLE arm_user_cohort FINAL"
  echo "[bench] wrote them in $(echo "$(date +%s.%N) - $started" | bc) s"
fi
echo "[bench] events: $(ch "SELECT count() FROM events WHERE experiment_key = 'bench'"), per-user rows: $(ch "SELECT count() FROM arm_user"), per-user-day rows: $(ch "SELECT count() FROM arm_user_daily"), first-exposure rows: $(ch "SELECT count() FROM arm_user_first"), cohort rows: $(ch "SELECT count() FROM arm_user_cohort")"

target/release/api serve >/tmp/marquee-bench-results.log 2>&1 &
api_pid=$!
trap 'kill $api_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/health/live" >/dev/null 2>&1 && break; sleep 0.1; done

measure() {
  local url="$1" key="${2:-}"
  for _ in $(seq 1 "$REQUESTS"); do
    curl -fsS -o /dev/null -w '%{time_total}\n' -H "x-api-key: $key" "$url"
  done | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f\n", a[int(NR/2)+1]*1000, a[int(NR*0.95)]*1000}'
}
results_url="http://127.0.0.1:$PORT/v1/experiments/bench/results"
method="$(curl -fsS -H "x-api-key: bench-admin-key" "$results_url" | python3 -c 'import json,sys; r=json.load(sys.stdin)["report"]; print(r["method"], len(r["periods"]), "periods")')"
echo "[bench] results method: $method"
read -r res_p50 res_p95 < <(measure "$results_url" bench-admin-key)
psql_ "UPDATE experiments SET outcome_window_days = 7 WHERE key = 'bench'"
curl -fsS -o /dev/null -H "x-api-key: bench-admin-key" "$results_url" # warm
read -r win_p50 win_p95 < <(measure "$results_url" bench-admin-key)
psql_ "UPDATE experiments SET outcome_window_days = NULL WHERE key = 'bench'"
read -r live_p50 live_p95 < <(measure "http://127.0.0.1:$PORT/health/live")
# Peak RSS (VmHWM) straight from the kernel, read before the process goes away.
rss_kb="$(awk '/VmHWM/ {print $2}' "/proc/$api_pid/status")"
kill $api_pid; wait $api_pid 2>/dev/null || true
trap - EXIT
echo
printf '%-46s %10s %10s\n' "route ($REQUESTS sequential requests)" "p50 ms" "p95 ms"
printf '%-46s %10s %10s\n' "results, cohort method, whole exposure" "$res_p50" "$res_p95"
printf '%-46s %10s %10s\n' "results, cohort method, 7-day outcome window" "$win_p50" "$win_p95"
printf '%-46s %10s %10s\n' "GET /health/live (baseline)" "$live_p50" "$live_p95"
echo "ratio results/live at p50: $(echo "scale=1; $res_p50 / $live_p50" | bc)x (window: $(echo "scale=1; $win_p50 / $live_p50" | bc)x)"
echo "api peak RSS: $((rss_kb / 1024)) MiB"
awk -v p="$res_p95" 'BEGIN { if (p < 100) print "PASS: results (cohort method, whole exposure) answer in < 100 ms at p95"; else print "FAIL: results p95 >= 100 ms" }'
awk -v w="$win_p95" 'BEGIN { if (w < 100) print "outcome window: < 100 ms at p95"; else print "outcome window: p95 " w " ms, over the 100 ms aim (a per-user-day join)" }'
