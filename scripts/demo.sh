#!/usr/bin/env bash
# The README's first command: the whole of Marquee, live, with demo data.
#
#  1. brings the local stack up (installing what is missing) and builds the binaries;
#  2. migrates, seeds the medium synthetic catalog (2k movies, 20k users, ~1M
#     interactions) and trains popularity, item-kNN and ALS into S3;
#  3. starts the worker and the api, creates the experiment `home` with three
#     arms (one per algorithm) under Thompson sampling, and starts it;
#  4. runs a traffic simulator for DEMO_SECONDS (60) in which synthetic users
#     click according to hidden tastes, half through POST /v1/events and half
#     straight to Kafka;
#  5. prints where to look, the admin key, and a summary: impressions, CTR per
#     arm, weights at start and end. Ctrl-C stops what it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_OF_TRAFFIC="${DEMO_SECONDS:-60}"
SIZE="${DEMO_SIZE:-medium}"
SEED="${DEMO_SEED:-42}"
PORT="${MARQUEE_API_PORT:-8080}"
LOGS="$ROOT/.stack/logs"
BIN="$ROOT/target/release"
say() { printf '\n\033[1m== [+%dm%02ds] %s\033[0m\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

pids=()
cleanup() {
  if [ "${#pids[@]}" -gt 0 ]; then
    say "stopping api and worker"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "stack"
scripts/stack.sh up
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
mkdir -p "$LOGS"

say "building api and worker (release)"
cargo build --release --locked -p marquee-api -p marquee-worker

ADMIN_KEY_FILE="$ROOT/.stack/demo-admin-key"
[ -s "$ADMIN_KEY_FILE" ] || od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | sed 's/^/mq_admin_/' >"$ADMIN_KEY_FILE"
export MARQUEE_BOOTSTRAP_ADMIN_KEY
MARQUEE_BOOTSTRAP_ADMIN_KEY="$(cat "$ADMIN_KEY_FILE")"
export MARQUEE_API_PORT="$PORT"
export MARQUEE_WORKER_METRICS_PORT="${MARQUEE_WORKER_METRICS_PORT:-9091}"
API="http://127.0.0.1:$PORT"

# Steps whose subcommand or route this build lacks are skipped with a message,
# so the stack, api and worker always come up.
has() { "$1" "$2" --help >/dev/null 2>&1; }
skipped=()

say "migrating"
"$BIN/api" migrate
if has "$BIN/marquee-tools" seed && has "$BIN/worker" train; then
  say "seeding the $SIZE catalog (seed $SEED), training popularity, item-kNN and ALS"
  "$BIN/marquee-tools" seed --size "$SIZE" --seed "$SEED"
  for algorithm in popularity item_knn als; do
    "$BIN/worker" train --algorithm "$algorithm"
  done
else
  skipped+=("seeding and training: this build has no 'marquee-tools seed' / 'worker train' yet")
fi

say "starting worker and api (logs in .stack/logs)"
"$BIN/worker" run >"$LOGS/worker.log" 2>&1 &
pids+=($!)
"$BIN/api" serve >"$LOGS/api.log" 2>&1 &
pids+=($!)
# Ready once is enough: right after start the worker's first model load keeps
# the machine busy and a single probe may miss its 1 s limit.
ready=""
for _ in $(seq 1 300); do
  if curl -fsS "$API/health/ready" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { tail -20 "$LOGS/api.log"; echo "api did not become ready within 60 s" >&2; exit 1; }

admin() { curl -fsS -H "x-api-key: $MARQUEE_BOOTSTRAP_ADMIN_KEY" -H 'content-type: application/json' "$@"; }
weights() {
  admin "$API/v1/experiments/home" | python3 -c 'import json, sys
print(" ".join("%s=%.2f" % (a["key"], a["weight"]) for a in json.load(sys.stdin)["arms"]))'
}

experiments_route="$(curl -s -o /dev/null -w '%{http_code}' -H "x-api-key: $MARQUEE_BOOTSTRAP_ADMIN_KEY" "$API/v1/experiments")"
if [ "$experiments_route" = 404 ] || [ "$experiments_route" = 405 ] || ! has "$BIN/api" keys; then
  skipped+=("experiment and traffic: this build has no experiments admin API or 'api keys' yet")
else
say "experiment home: popularity (control) vs item-kNN vs ALS, Thompson sampling"
if ! admin "$API/v1/experiments/home" >/dev/null 2>&1; then
  admin -X POST "$API/v1/experiments" -d '{
    "key": "home", "description": "Home page row: which algorithm earns the most clicks?",
    "policy": "thompson", "metric": "ctr", "min_weight": 0.05, "reweight_interval_s": 10,
    "bandit": {"burn_in_users": 50, "exploration_s": 15},
    "arms": [
      {"key": "popularity", "algorithm": "popularity", "weight": 0.34, "is_control": true},
      {"key": "item_knn", "algorithm": "item_knn", "weight": 0.33, "is_control": false},
      {"key": "als", "algorithm": "als", "weight": 0.33, "is_control": false}
    ]}' >/dev/null
  admin -X POST "$API/v1/experiments/home/start" >/dev/null
fi
CLIENT_KEY="$("$BIN/api" keys create --role client --name demo-simulator | tail -1)"
weights_start="$(weights)"

say "simulating ${SECONDS_OF_TRAFFIC}s of traffic"
"$BIN/marquee-tools" simulate --client-key "$CLIENT_KEY" --api-url "$API" --experiment home \
  --seconds "$SECONDS_OF_TRAFFIC" --size "$SIZE" --seed "$SEED"
sleep 3 # let the worker ingest the last batches

weights_end="$(weights)"
say "summary (measured by the worker in ClickHouse)"
admin "$API/v1/experiments/home/results" | python3 -c '
import json, sys
r = json.load(sys.stdin)["report"]
pct = lambda x: "-" if x is None else "%.2f%%" % (100 * x)
print("%-12s%-12s%8s%13s%9s%9s   %s" % ("arm", "algorithm", "users", "impressions", "clicks", "CTR", "95% CI"))
for a in r["arms"]:
    c = a["ctr"]
    ci = "-" if c.get("ci_low") is None else "%s - %s" % (pct(c["ci_low"]), pct(c["ci_high"]))
    print("%-12s%-12s%8d%13d%9d%9s   %s" % (a["arm"], a["algorithm"], a["users"], a["impressions"], a["clicks"], pct(c["mean"]), ci))
srm = r.get("srm") or {}
print("method: %s over %d weight period(s); sample-ratio check: %s" % (
    r["method"], len(r.get("periods") or []), "MISMATCH" if srm.get("mismatch") else "ok"))
for c in r["comparisons"]:
    lift = (c.get("cohort") or {}).get("combined") or {}
    if lift.get("estimate") is not None:
        ci = lift.get("ci") or {}
        p = lift.get("p_value")
        print("  %s vs %s: %+.2f pp (95%% CI %+.2f to %+.2f pp), p = %s" % (
            c["arm"], c["control"], 100 * lift["estimate"], 100 * ci.get("low", 0), 100 * ci.get("high", 0),
            "-" if p is None else "%.3g" % p))
'
echo "weights at start: $weights_start"
echo "weights at end:   $weights_end"
fi
for step in "${skipped[@]}"; do echo "skipped: $step"; done

say "where to look"
cat <<EOF
dashboard   $API/dashboard#key=$MARQUEE_BOOTSTRAP_ADMIN_KEY
API docs    $API/docs
results     curl -H 'x-api-key: $MARQUEE_BOOTSTRAP_ADMIN_KEY' $API/v1/experiments/home/results
admin key   $MARQUEE_BOOTSTRAP_ADMIN_KEY
client key  ${CLIENT_KEY:-(none created)}
metrics     $API/metrics  and  http://127.0.0.1:$MARQUEE_WORKER_METRICS_PORT/metrics
logs        $LOGS/api.log  $LOGS/worker.log
EOF
echo "demo ready after $((SECONDS / 60))m$((SECONDS % 60))s (stack, build, seed, train, ${SECONDS_OF_TRAFFIC}s of traffic)"
if [ -t 0 ]; then
  say "api and worker keep running; Ctrl-C stops them"
  wait
fi
