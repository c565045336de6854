#!/usr/bin/env bash
# Rate-limit isolation, measured from outside the api: one client key sends
# NOISY_RATE requests/s (default 2,000) against a per-key limit of LIMIT
# (default 200/s), while another key sends QUIET_RATE (default 100/s). Both
# are wrk processes (paced by wrk's delay() hook), so the api's latency is
# not confused with the load generator's, as it is in an in-process test.
# Prints the quiet key's p50/p99 alone and beside the noisy one, the noisy
# key's rate and share of 429s, and the api's peak RSS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PORT="${BENCH_PORT:-18082}"
LIMIT="${LIMIT:-200}"
NOISY_RATE="${NOISY_RATE:-2000}"
QUIET_RATE="${QUIET_RATE:-100}"
DURATION="${DURATION:-15}"
DB="bench_rate"

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
scripts/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
export MARQUEE_API_PORT="$PORT" MARQUEE_BOOTSTRAP_ADMIN_KEY="bench-admin-key" MARQUEE_REDIS_NAMESPACE="bench-rate:"
export MARQUEE_RATE_LIMIT_PER_KEY="$LIMIT" RUST_LOG=error
psql -q "$MARQUEE_DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
export MARQUEE_DATABASE_URL="${MARQUEE_DATABASE_URL%/*}/$DB"
cargo build --release --locked -p marquee-api -p marquee-worker >/dev/null 2>&1
target/release/api migrate >/dev/null
psql -q "$MARQUEE_DATABASE_URL" -c "INSERT INTO movies (id, title, genres) VALUES (1, 'Heat', ARRAY['Crime'])" >/dev/null
noisy_key="$(target/release/api keys create --role client --name noisy | tail -1)"
quiet_key="$(target/release/api keys create --role client --name quiet | tail -1)"

target/release/api serve >/tmp/marquee-bench-rate.log 2>&1 &
api_pid=$!
lua_dir="$(mktemp -d)"
trap 'kill $api_pid 2>/dev/null || true; rm -rf "$lua_dir"' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/health/live" >/dev/null 2>&1 && break; sleep 0.1; done

# One request per connection every `pause` ms: connections × 1000 / pause requests/s.
paced() { # name key connections rate
  local pause=$(( $3 * 1000 / $4 ))
  cat >"$lua_dir/$1.lua" <<LUA
wrk.headers["x-api-key"] = "$2"
function delay() return $pause end
LUA
}
paced noisy "$noisy_key" 8 "$NOISY_RATE"
paced quiet "$quiet_key" 2 "$QUIET_RATE"
url="http://127.0.0.1:$PORT/v1/movies/1/similar?limit=10"
quiet_run() { wrk -t1 -c2 -d"${DURATION}s" --latency -s "$lua_dir/quiet.lua" "$url"; }
percentile() { awk -v p="$1" '$1 == p {print $2}' "$2"; }
ms() { # wrk's "1.23ms" / "850.00us" / "1.02s" -> ms
  awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else {sub(/s$/,"",v); print v*1000}}' <<<"$1"
}

curl -fsS -o /dev/null -H "x-api-key: $quiet_key" "$url" # warm the key cache
quiet_run >"$lua_dir/alone.txt"
wrk -t1 -c8 -d"$((DURATION + 4))s" -s "$lua_dir/noisy.lua" "$url" >"$lua_dir/noisy.txt" &
noisy_pid=$!
sleep 2
quiet_run >"$lua_dir/beside.txt"
wait "$noisy_pid"
rss_kb="$(awk '/VmHWM/ {print $2}' "/proc/$api_pid/status")"

noisy_requests="$(awk '/requests in/ {print $1}' "$lua_dir/noisy.txt")"
noisy_rate="$(awk '/^Requests\/sec/ {print $2}' "$lua_dir/noisy.txt")"
noisy_refused="$(awk '/Non-2xx or 3xx responses/ {print $5}' "$lua_dir/noisy.txt")"
echo
printf '%-40s %10s %10s %10s\n' "quiet key ($QUIET_RATE req/s)" "p50 ms" "p99 ms" "req/s"
for phase in alone beside; do
  f="$lua_dir/$phase.txt"
  printf '%-40s %10s %10s %10s\n' "$phase$([ "$phase" = beside ] && echo " the noisy key")" \
    "$(ms "$(percentile 50% "$f")")" "$(ms "$(percentile 99% "$f")")" "$(awk '/^Requests\/sec/ {print $2}' "$f")"
done
echo "noisy key: $noisy_requests requests at $noisy_rate req/s against a limit of $LIMIT/s; ${noisy_refused:-0} answered 429"
p99_alone="$(ms "$(percentile 99% "$lua_dir/alone.txt")")"
p99_beside="$(ms "$(percentile 99% "$lua_dir/beside.txt")")"
echo "quiet p99 beside / alone: $(echo "scale=2; $p99_beside / $p99_alone" | bc)x"
echo "api peak RSS: $((rss_kb / 1024)) MiB"
grep -c '"status":"429"\|429' "$lua_dir/beside.txt" >/dev/null 2>&1 || true
if grep -q "Non-2xx" "$lua_dir/beside.txt"; then echo "FAIL: the quiet key was refused too"; exit 1; fi
