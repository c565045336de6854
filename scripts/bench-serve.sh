#!/usr/bin/env bash
# Serving throughput: the release api under wrk (DURATION seconds, CONNECTIONS
# connections, 2 threads) against GET /v1/users/{random user}/recommendations
# and, in the same script as the baseline, against GET /health/live; then the
# recommendations route again with the in-process list cache off, so every
# request makes its Redis MGET, then with the user cache off too (and a
# PostgreSQL read per request), and with each impression its own Kafka record
# (packing off), and with packs sent as plain JSON instead of LZ4 frames.
# Prints rps, p50 and p99 of each, the ratios to the baseline (of rps, and of
# p99 per round), the api's peak RSS, each process's share of the CPU, and per
# phase how many requests missed the per-user caches (PostgreSQL reads, Redis
# MGETs) and how much of the machine the hypervisor took. Beside wrk's p99,
# the "api p99" column is read from the api's own latency histogram (routed
# to answered): the part of the tail the route's work accounts for, without
# the time requests queue for a core the api shares with wrk.
#
# API_CPUS and WRK_CPUS (taskset lists, e.g. API_CPUS=0-3 WRK_CPUS=4-7) pin the
# api and wrk to cores of their own, for machines with cores to spare: the
# client then stops competing with the server. On two cores (one each) it
# did not lower the tail (see docs/serving.md).
#
# Impressions go to a scratch broker on BENCH_KAFKA_PORT (default 59192) with
# a store of its own, removed at the end; the local stack's broker is unused.
#
# PERF=1 also records a CPU profile of the api in target/bench-serve.perf.data.
#
# COMPARE_BIN=/path/to/another/api (a copy of target/release/api from another
# commit) then runs COMPARE_ROUNDS (3) alternated pairs of the recommendations
# route, this build against that one, on the same data: a change's effect on
# rps and p99 beside the drift between runs.
#
# Data: MOVIES movies, an experiment `bench` with two running arms, and a
# precomputed 50-movie list per arm for USERS users in Redis; each user has
# seen 5 movies in PostgreSQL, so every request does the seen-filter too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-64}"
USERS="${USERS:-10000}"
MOVIES="${MOVIES:-2000}"
PORT="${BENCH_PORT:-18081}"
DB="bench_serve"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
scripts/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
export MARQUEE_API_PORT="$PORT" MARQUEE_BOOTSTRAP_ADMIN_KEY="bench-admin-key" MARQUEE_REDIS_NAMESPACE="bench-serve:"
export MARQUEE_DEFAULT_EXPERIMENT=bench RUST_LOG=warn
# wrk sends every request with one client key, far past its production limit.
export MARQUEE_RATE_LIMIT_PER_KEY=0
# Its own topics, ClickHouse database and bucket, and a scratch broker with a
# fresh store of its own (removed at the end): the ~1M impressions a run emits
# must not reach a worker consuming the main events topic, and the broker's
# SQLite store does not give space back when a topic is deleted, so a shared
# store would grow with every run and slow the broker and the test suite.
export MARQUEE_EVENTS_TOPIC="marquee.bench-serve.events" MARQUEE_DLQ_TOPIC="marquee.bench-serve.dlq"
export MARQUEE_CLICKHOUSE_DATABASE="bench_serve" MARQUEE_S3_BUCKET="bench-serve"
bench_broker_dir="$ROOT/.stack/bench-serve-broker"
bench_broker_port="${BENCH_KAFKA_PORT:-59192}"
bench_broker() { MARQUEE_STACK_DIR="$bench_broker_dir" MARQUEE_KAFKA_PORT="$bench_broker_port" scripts/stack.sh "$@"; }
cleanup_broker() { bench_broker kafka-down 2>/dev/null || true; rm -rf "$bench_broker_dir"; }
cleanup_broker
trap cleanup_broker EXIT
bench_broker kafka-up
export MARQUEE_KAFKA_BROKERS="127.0.0.1:$bench_broker_port"
base_url="${MARQUEE_DATABASE_URL%/*}"
psql -q "$MARQUEE_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
export MARQUEE_DATABASE_URL="$base_url/$DB"
build_log="$(mktemp)"
# Symbols and line tables only where perf needs them; users' builds are stripped.
PROFILE=release
[ -n "${PERF:-}" ] && PROFILE=profiling
cargo build --profile "$PROFILE" --locked -p marquee-api >"$build_log" 2>&1 || { tail -30 "$build_log" >&2; echo "[bench] building the api failed" >&2; exit 1; }
rm -f "$build_log"
target/$PROFILE/api migrate >/dev/null

echo "[bench] seeding $MOVIES movies, $USERS users (5 views each), 2 lists per user"
psql -q "$MARQUEE_DATABASE_URL" -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO movies (id, title, genres) SELECT i, 'Movie ' || i, ARRAY['Drama'] FROM generate_series(1, $MOVIES) i;
INSERT INTO views (event_id, user_id, movie_id, ts)
  SELECT gen_random_uuid(), 'u' || u, 1 + (u * 7 + k) % $MOVIES, now() FROM generate_series(0, $USERS - 1) u, generate_series(0, 4) k;
INSERT INTO experiments (key, status, salt, policy, metric, started_at) VALUES ('bench', 'running', 'bench', 'fixed', 'ctr', now());
INSERT INTO arms (experiment_key, arm_key, algorithm_key, weight, is_control, position) VALUES
  ('bench', 'control', 'popularity', 0.5, true, 0), ('bench', 'als', 'als', 0.5, false, 1);
SQL
redis_port="${MARQUEE_REDIS_URL##*:}"
redis-cli -p "$redis_port" --scan --pattern 'bench-serve:*' | xargs -r -n 1000 redis-cli -p "$redis_port" DEL >/dev/null
python3 - "$USERS" "$MOVIES" <<'PY' | redis-cli -p "$redis_port" --pipe >/dev/null
import json, sys
users, movies = int(sys.argv[1]), int(sys.argv[2])
def cmd(*args):
    out = [f"*{len(args)}\r\n"]
    for a in args:
        b = str(a).encode()
        out.append(f"${len(b)}\r\n{a}\r\n")
    return "".join(out)
w = sys.stdout.write
for u in range(users):
    for alg, offset in (("popularity", 0), ("als", 500)):
        items = [{"movie_id": 1 + (offset + u * 13 + i) % movies, "score": 1 - i / 100} for i in range(50)]
        w(cmd("SET", f"bench-serve:recs:{alg}:u{u}", json.dumps({"model_version": "bench", "items": items}, separators=(",", ":"))))
w(cmd("ZADD", "bench-serve:hot:movies", *[x for m in range(1, 201) for x in (1000 - m, m)]))
PY

start_api() {
  env "$@" ${API_CPUS:+taskset -c "$API_CPUS"} "${api_bin:-target/$PROFILE/api}" serve >/tmp/marquee-bench-serve.log 2>&1 &
  api_pid=$!
  trap 'kill $api_pid 2>/dev/null || true; cleanup_broker' EXIT
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/health/live" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_api() { kill "$api_pid"; wait "$api_pid" 2>/dev/null || true; trap cleanup_broker EXIT; }
start_api
CLIENT_KEY="$(target/$PROFILE/api keys create --role client --name bench 2>/dev/null | tail -1 || true)"
[ -n "$CLIENT_KEY" ] || CLIENT_KEY="bench-admin-key"

lua="$(mktemp --suffix=.lua)"
cat >"$lua" <<LUA
-- Requests for random users, formatted once per thread before the run, so
-- wrk spends no more per request than on the bare route (it shares the cores).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", 42 + threads)
end
local requests = {}
local next_request = 0
-- \`-- warm\`: each thread asks once for each user on its list, then for the
-- bare route, so the measured phase (same seeds, same lists) finds every
-- user it asks for in the per-user caches however slowly the cold requests
-- went.
local warm_only = false
local bare = wrk.format("GET", "/health/live")
function init(args)
  warm_only = args[1] == "warm"
  math.randomseed(seed or 42)
  local listed = {}
  for _ = 1, 20000 do
    local user = math.random(0, $USERS - 1)
    if not (warm_only and listed[user]) then
      listed[user] = true
      requests[#requests + 1] = wrk.format("GET", "/v1/users/u" .. user .. "/recommendations?limit=10", { ["x-api-key"] = "$CLIENT_KEY" })
    end
  end
end
function request()
  if warm_only and next_request >= #requests then
    return bare
  end
  next_request = next_request % #requests + 1
  return requests[next_request]
end
LUA
curl -fsS -o /dev/null -H "x-api-key: $CLIENT_KEY" "http://127.0.0.1:$PORT/v1/users/u1/recommendations" || { tail -20 /tmp/marquee-bench-serve.log; exit 1; }
# Warm-up: key cache, connection pools, page cache, and each user the
# measured phase asks for (the 80-100% of MARQUEE_USER_CACHE_TTL_MS, 30 s,
# that an entry lives must outlast the warm-up and the phase together).
warm() { ${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t2 -c"$CONNECTIONS" -d4s -s "$lua" "http://127.0.0.1:$PORT" -- warm >/dev/null; }

run() { ${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@"; }
# CPU seconds of every process (all its threads), as "pid name seconds". By
# pid, not name: a kernel worker renames itself with the work it runs, and a
# name missing from the first snapshot would count its whole lifetime as used
# during the phase. A process that exits between snapshots is not counted.
cpu_by_process() {
  python3 - <<'PY'
import os
ticks = os.sysconf("SC_CLK_TCK")
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    name = stat[stat.index("(") + 1:stat.rindex(")")].replace(" ", "_")
    name = "kworker" if name.startswith("kworker") else name
    fields = stat[stat.rindex(")") + 2:].split()
    print(f"{pid}\t{name}\t{(int(fields[11]) + int(fields[12])) / ticks:.2f}")
PY
}
# Share of one core each process name used between two cpu_by_process
# snapshots (processes started in between count from zero).
cpu_shares() {
  awk -F'\t' -v d="$3" '
    NR == FNR {a[$1] = $3; next}
    {used[$2] += $3 - a[$1]}
    END {for (n in used) {u = used[n] / d * 100; if (u >= 1) printf "  %-16s %5.0f%%\n", n, u}}' \
    <(echo "$1") <(echo "$2") | sort -k2 -rn
}
# Idle and steal (time the hypervisor gave another guest) ticks from /proc/stat.
idle_steal_ticks() { awk '/^cpu / {print $5, $9}' /proc/stat; }
# Shares over the middle of a run (wrk must still be alive to be counted),
# then the machine's idle time and the time taken by the hypervisor, in the
# same unit: a phase that lost time to another guest shows it here.
cpu_during_run() {
  local span=$((DURATION > 6 ? DURATION - 4 : 2)) before ticks_before
  sleep 2
  before="$(cpu_by_process)"
  ticks_before="$(idle_steal_ticks)"
  sleep "$span"
  cpu_shares "$before" "$(cpu_by_process)" "$span"
  echo "$ticks_before $(idle_steal_ticks)" | awk -v d="$span" -v hz="$(getconf CLK_TCK)" \
    '{printf "  %-16s %5.0f%%\n  %-16s %5.0f%%\n", "(idle)", ($3 - $1) / hz / d * 100, "(steal)", ($4 - $2) / hz / d * 100}'
}
# The api's Prometheus page (empty if it cannot be read): one fetch per
# snapshot, so the counters and histogram below are of the same instant.
api_metrics() { curl -fsS "http://127.0.0.1:$PORT/metrics" 2>/dev/null || true; }
# From an api_metrics page on stdin, the api's cache counters: misses of the
# per-user caches mean PostgreSQL reads (user contexts) and Redis MGETs
# (lists) on the request path.
cache_counters() {
  awk '
    /^marquee_user_context_total\{.*result="miss"/ {c = $2}
    /^marquee_list_memory_total\{.*result="miss"/ {l = $2}
    END {printf "%d %d\n", c, l}'
}
# From an api_metrics page on stdin, the api's own latency histogram for one
# route (routed to answered, so without the time a request waits in the
# socket or for a core before the api reads it, nor the write back),
# cumulative `le count` lines summed over statuses.
route_buckets() {
  awk -v label="route=\"$1\"" '
    /^marquee_http_request_duration_seconds_bucket\{/ && index($0, label) {
      match($0, /le="[^"]*"/); n[substr($0, RSTART + 4, RLENGTH - 5)] += $NF
    }
    END {for (le in n) print le, n[le]}' | sort -g
}
# From two route_buckets snapshots: the share of the phase's requests the api
# answered within 0.5, 1 and 5 ms, and the bucket bound its p99 falls under.
served_within() {
  awk 'NR == FNR {before[$1] = $2; next}
    {les[++k] = $1; n[k] = $2 - before[$1]}
    END {
      total = n[k]; if (total <= 0) {print "-"; exit}
      for (i = 1; i <= k; i++) {
        if (les[i] == 0.0005 || les[i] == 0.001 || les[i] == 0.005) shares = shares sprintf(" %.2f%% within %g ms,", n[i] / total * 100, les[i] * 1000)
        if (p99 == "" && n[i] >= 0.99 * total) p99 = les[i] * 1000
      }
      printf "%s|%s\n", p99, shares
    }' <(echo "$1") <(echo "$2")
}
cpu_file="$(mktemp)"
# One measured phase: wrk's output in $out_file, CPU shares in $cpu_file.
phase() {
  local label="$1"; shift
  echo "[bench] wrk ${DURATION}s x $CONNECTIONS connections: $label"
  cpu_during_run >"$cpu_file" &
  local sampler=$!
  if [ -n "${PERF:-}" ] && [ "$label" = "recommendations (round 1)" ]; then
    # PERF=1: a CPU profile of the api during this phase, for `perf report -i`.
    (sleep 3; perf record -F 499 --call-graph dwarf,16384 -p "$api_pid" -o target/bench-serve.perf.data -- sleep 8 >/dev/null 2>&1) &
  fi
  local before after route page_before page_after served
  route="/v1/users/{user_id}/recommendations"
  [ "${label#/health/live}" = "$label" ] || route="/health/live"
  page_before="$(api_metrics)"
  run "$@" >"$out_file"
  page_after="$(api_metrics)"
  before="$(cache_counters <<<"$page_before")"
  after="$(cache_counters <<<"$page_after")"
  served="$(served_within "$(route_buckets "$route" <<<"$page_before")" "$(route_buckets "$route" <<<"$page_after")")"
  echo "api_p99_at_most ${served%%|*}" >>"$out_file"
  wait "$sampler"
  echo "[bench]   inside the api (routed to answered):${served#*|} p99 at most ${served%%|*} ms"
  awk '$1 == "(idle)" {i = $2} $1 == "(steal)" {t = $2} END {printf "[bench]   machine idle %s, stolen by the hypervisor %s (100%% = one core)\n", i, t}' "$cpu_file"
  case "$label" in
    *"caches off"*) echo "[bench]   caches off: every request reads its user's context from PostgreSQL (batched) and its list from Redis" ;;
    *"list cache off"*) echo "$before $after" | awk '{printf "[bench]   list cache off: every request reads Redis; user context misses %d (PostgreSQL reads)\n", $3 - $1}' ;;
    *) echo "$before $after" | awk '{printf "[bench]   cache misses during the phase: user contexts %d (PostgreSQL reads), lists %d (Redis MGETs)\n", $3 - $1, $4 - $2}' ;;
  esac
}
out_file="$(mktemp)"
# ROUNDS alternating pairs, so drift on a shared machine (other load, the
# broker's store, page cache) falls on both routes alike.
ROUNDS="${ROUNDS:-2}"
declare -a recs_out live_out
for round in $(seq 1 "$ROUNDS"); do
  # Every recommendations phase starts after the same warm-up: the live
  # phase before round 2 serves no recommendations, the per-user cache
  # entries expire meanwhile, and round 2 would measure a cold start (all
  # 10,000 users missing at once) instead of steady serving. The miss
  # counts printed per phase show what each one paid.
  warm
  phase "recommendations (round $round)" -s "$lua" "http://127.0.0.1:$PORT"
  recs_out[round]="$(cat "$out_file")"
  [ "$round" = 1 ] && recs_cpu="$(cat "$cpu_file")"
  phase "/health/live (round $round)" "http://127.0.0.1:$PORT/health/live"
  live_out[round]="$(cat "$out_file")"
  [ "$round" = 1 ] && live_cpu="$(cat "$cpu_file")"
done
rss_kb="$(awk '/VmHWM/ {print $2}' "/proc/$api_pid/status")"
stop_api
# The same route with the in-process list cache off: every request reads Redis.
start_api MARQUEE_LIST_CACHE_TTL_MS=0
warm
phase "recommendations, list cache off" -s "$lua" "http://127.0.0.1:$PORT"
uncached="$(cat "$out_file")"
stop_api
# Both per-user caches off: every request reads PostgreSQL and Redis, as a
# user's first request does (and most requests where users come back less
# often than the cache lifetimes).
start_api MARQUEE_LIST_CACHE_TTL_MS=0 MARQUEE_USER_CACHE_TTL_MS=0
warm
phase "recommendations, user and list caches off" -s "$lua" "http://127.0.0.1:$PORT"
cold_users="$(cat "$out_file")"
stop_api
# The same route with each impression its own Kafka record (no packing).
start_api MARQUEE_IMPRESSION_PACKING_MS=0
warm
phase "recommendations, impressions unpacked" -s "$lua" "http://127.0.0.1:$PORT"
unpacked="$(cat "$out_file")"
unpacked_cpu="$(cat "$cpu_file")"
stop_api
# The same route with packed impressions sent as plain JSON (not LZ4 frames).
start_api MARQUEE_IMPRESSION_ENCODING=identity
warm
phase "recommendations, packs uncompressed" -s "$lua" "http://127.0.0.1:$PORT"
uncompressed="$(cat "$out_file")"
uncompressed_cpu="$(cat "$cpu_file")"
stop_api
# COMPARE_BIN: this build and the other, alternated, each after the warm-up.
compare_rows=()
if [ -n "${COMPARE_BIN:-}" ]; then
  [ -x "$COMPARE_BIN" ] || { echo "[bench] COMPARE_BIN=$COMPARE_BIN is not an executable" >&2; exit 1; }
  for round in $(seq 1 "${COMPARE_ROUNDS:-3}"); do
    for api_bin in target/$PROFILE/api "$COMPARE_BIN"; do
      start_api
      warm
      phase "recommendations, $api_bin (compare round $round)" -s "$lua" "http://127.0.0.1:$PORT"
      compare_rows+=("$api_bin (round $round)|$(cat "$out_file")")
      stop_api
    done
  done
  api_bin=""
fi
rm -f "$lua" "$cpu_file" "$out_file"

# wrk prints latencies as 1.23ms / 456.78us / 1.2s; normalise to ms.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.2f", v}'; }
field() { echo "$1" | awk -v k="$2" '$1 == k {print $2}' | to_ms; }
rps() { echo "$1" | awk '/Requests\/sec/ {printf "%.0f", $2}'; }
errors() { echo "$2" | awk -v phase="$1" '/Non-2xx|Socket errors/ {sub(/^ +/, ""); print "  " phase ": " $0}' ; }
api_p99() { echo "$1" | awk '$1 == "api_p99_at_most" {print "<= " $2}'; }
row() { printf '%-52s %10s %9s %9s %14s\n' "$1" "$(rps "$2")" "$(field "$2" 50%)" "$(field "$2" 99%)" "$(api_p99 "$2")"; }
printf '\n%-52s %10s %9s %9s %14s\n' "route" "rps" "p50 ms" "p99 ms" "api p99 ms"
recs_total=0; live_total=0
for round in $(seq 1 "$ROUNDS"); do
  row "GET /v1/users/{id}/recommendations (round $round)" "${recs_out[round]}"
  row "GET /health/live, baseline (round $round)" "${live_out[round]}"
  recs_total=$((recs_total + $(rps "${recs_out[round]}")))
  live_total=$((live_total + $(rps "${live_out[round]}")))
done
row "recommendations, list cache off (every MGET)" "$uncached"
row "recommendations, both caches off (+ every PG read)" "$cold_users"
row "recommendations, one Kafka record per impression" "$unpacked"
row "recommendations, packs as plain JSON (no LZ4)" "$uncompressed"
live_mean=$((live_total / ROUNDS))
for round in $(seq 1 "$ROUNDS"); do
  echo "ratio recommendations/live, round $round: $(echo "scale=2; $(rps "${recs_out[round]}") / $(rps "${live_out[round]}")" | bc)"
done
echo "ratio recommendations/live, all rounds: $(echo "scale=2; $recs_total / $live_total" | bc)"
# The tail against the bare route's in the same round: on shared cores the
# bare route's own p99 moves with the machine (steal, wrk, the broker), so
# this says how much of the route's tail is the route's own.
for round in $(seq 1 "$ROUNDS"); do
  echo "p99 recommendations/live, round $round: $(echo "scale=2; $(field "${recs_out[round]}" 99%) / $(field "${live_out[round]}" 99%)" | bc)"
done
# The issue's aims per round: at least half the bare route's rate, and p99 at
# most 5 ms. Beside them, the bare route's own p99: when a route that does
# nothing is slower than 5 ms at p99, the tail in that round belongs to the
# machine (cores shared with wrk, the stores and other guests), not the route.
for round in $(seq 1 "$ROUNDS"); do
  awk -v round="$round" -v recs="$(rps "${recs_out[round]}")" -v live="$(rps "${live_out[round]}")" \
      -v p99="$(field "${recs_out[round]}" 99%)" -v live_p99="$(field "${live_out[round]}" 99%)" 'BEGIN {
    ratio = recs / live
    printf "aims, round %d: rate %.2f of the bare route (>= 0.50: %s), p99 %.2f ms (<= 5 ms: %s); the bare route'"'"'s own p99 %.2f ms%s\n",
      round, ratio, (ratio >= 0.5 ? "met" : "not met"), p99, (p99 <= 5 ? "met" : "not met"), live_p99,
      (live_p99 > 5 ? " (above 5 ms itself)" : "")
  }'
done
echo "ratio with the list cache off (to the mean baseline):   $(echo "scale=2; $(rps "$uncached") / $live_mean" | bc)"
echo "ratio with both caches off (to the mean baseline):     $(echo "scale=2; $(rps "$cold_users") / $live_mean" | bc)"
echo "ratio with impressions unpacked (to the mean baseline): $(echo "scale=2; $(rps "$unpacked") / $live_mean" | bc)"
echo "ratio with packs uncompressed (to the mean baseline):   $(echo "scale=2; $(rps "$uncompressed") / $live_mean" | bc)"
echo "api peak RSS: $((rss_kb / 1024)) MiB"
# The api's CPU time per request: steadier between runs than rps, which
# moves with whatever else the two cores are doing.
api_us_per_request() { echo "$1" | awk -v r="$2" '$1 == "api" {sub(/%/, "", $2); printf "%.1f", $2 / 100 / r * 1e6}'; }
echo "api CPU per request, round 1: recommendations $(api_us_per_request "$recs_cpu" "$(rps "${recs_out[1]}")") us, /health/live $(api_us_per_request "$live_cpu" "$(rps "${live_out[1]}")") us"
echo "CPU per process (100% = one core), recommendations round 1:"
echo "$recs_cpu"
echo "CPU per process, /health/live round 1:"
echo "$live_cpu"
echo "CPU per process, recommendations with impressions unpacked:"
echo "$unpacked_cpu"
echo "CPU per process, recommendations with packs uncompressed:"
echo "$uncompressed_cpu"
if [ "${#compare_rows[@]}" -gt 0 ]; then
  printf '\nalternated builds, recommendations route\n%-52s %10s %9s %9s %14s\n' "api" "rps" "p50 ms" "p99 ms" "api p99 ms"
  for entry in "${compare_rows[@]}"; do row "${entry%%|*}" "${entry#*|}"; done
fi
for round in $(seq 1 "$ROUNDS"); do errors "recommendations round $round" "${recs_out[round]}"; errors "/health/live round $round" "${live_out[round]}"; done
for entry in "${compare_rows[@]}"; do errors "${entry%%|*}" "${entry#*|}"; done
errors "list cache off" "$uncached"; errors "both caches off" "$cold_users"; errors "impressions unpacked" "$unpacked"; errors "packs uncompressed" "$uncompressed"
