#!/usr/bin/env bash
# Marquee's local stack without Docker: PostgreSQL, Redis, ClickHouse, a
# Kafka-protocol broker (Tansu) and an S3 server (s3s-fs by default, Garage on
# request), each on 127.0.0.1 with data and logs under one git-ignored folder.
#
#   scripts/stack.sh up       install what is missing, start what is down, wait until ready
#   scripts/stack.sh down     stop what this script started (pid files only)
#   scripts/stack.sh status   one line per server; non-zero exit if any is down
#   scripts/stack.sh reset    down, then wipe all data
#   scripts/stack.sh env      print the MARQUEE_* variables that point the binaries here
#   scripts/stack.sh kafka-up | kafka-down
#                             only the broker: with MARQUEE_STACK_DIR and MARQUEE_KAFKA_PORT
#                             set, a scratch broker of its own (scripts/bench-serve.sh)
#
# Every port, the data folder and the tools folder can be overridden by env
# (see the defaults below). Built tools go outside the clone so that fresh
# clones and CI on the same machine reuse them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${MARQUEE_STACK_DIR:-$ROOT/.stack}"
TOOLS_DIR="${MARQUEE_TOOLS_DIR:-$HOME/.cache/marquee/tools}"

PG_PORT="${MARQUEE_PG_PORT:-55432}"
REDIS_PORT="${MARQUEE_REDIS_PORT:-56379}"
KAFKA_PORT="${MARQUEE_KAFKA_PORT:-59092}"
CH_HTTP_PORT="${MARQUEE_CLICKHOUSE_HTTP_PORT:-58123}"
CH_TCP_PORT="${MARQUEE_CLICKHOUSE_TCP_PORT:-59000}"
CH_INTERSERVER_PORT="${MARQUEE_CLICKHOUSE_INTERSERVER_PORT:-59009}"
S3_PORT="${MARQUEE_S3_PORT:-59900}"
S3_SERVER="${MARQUEE_S3_SERVER:-s3s-fs}" # s3s-fs | garage
S3_ACCESS_KEY="${MARQUEE_S3_ACCESS_KEY:-GKmarqueelocal0001}"
S3_SECRET_KEY="${MARQUEE_S3_SECRET_KEY:-marquee-local-secret-key-0001}"
PG_USER=marquee
PG_PASSWORD=marquee
PG_DB=marquee

TANSU_VERSION=0.6.0
TANSU_FEATURES=libsql,postgres
S3S_VERSION=0.14.1
GARAGE_VERSION=2.5.0
TANSU_BIN="$TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu"
S3S_BIN="$TOOLS_DIR/s3s-fs-$S3S_VERSION/bin/s3s-fs"
GARAGE_BIN="$TOOLS_DIR/garage-$GARAGE_VERSION/bin/garage"
PG_BIN="/usr/lib/postgresql/15/bin"
# Measured on a fresh 2-core machine (see README, "First run"); printed so the
# wait has an end in sight.
declare -A TOOL_BUILD_ESTIMATE=([tansu]="about 10 min alone, 26 min beside another build," [s3s-fs]="about 4 min" [garage]="about 20 min")

# Elapsed time on every line: a first run spends minutes in tool builds, and a
# newcomer should see which step it is in and that it moves.
log() { printf '[stack +%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Waits for a readiness probe, so `up` returns only when every server answers.
wait_for() {
  local name="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "$name did not become ready within ${seconds}s; see $STACK_DIR/$name/*.log"
    fi
    sleep 0.2
  done
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---------------------------------------------------------------- install

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

cargo_tool() {
  local bin="$1" crate="$2" version="$3" features="$4"
  [ -x "$bin" ] && return 0
  command -v cargo >/dev/null || die "cargo is needed to build $crate"
  local estimate="${TOOL_BUILD_ESTIMATE[$crate]:-a few minutes}" began=$SECONDS
  log "building $crate $version into $TOOLS_DIR (once per machine; $estimate on 2 cores)"
  local args=(install "$crate@$version" --locked --root "$(dirname "$(dirname "$bin")")")
  [ -n "$features" ] && args+=(--features "$features")
  # A lighter release profile than the tools' own (no LTO, parallel codegen, no
  # debug info): the first run on a 2-core machine spends most of its time here.
  CARGO_TARGET_DIR="$TOOLS_DIR/.build-$crate" CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true \
    cargo "${args[@]}" >"$TOOLS_DIR/$crate-build.log" 2>&1 \
    || die "building $crate failed; see $TOOLS_DIR/$crate-build.log"
  rm -rf "$TOOLS_DIR/.build-$crate"
  log "built $crate in $(((SECONDS - began) / 60))m$(((SECONDS - began) % 60))s"
}

# Python with confluent-kafka: the external Kafka client of the tests and the
# demo (Debian's librdkafka and kcat are too old for Tansu; the wheel bundles a current one).
PY_VENV="$TOOLS_DIR/venv"
python_tools() {
  [ -x "$PY_VENV/bin/python" ] && "$PY_VENV/bin/python" -c 'import confluent_kafka' 2>/dev/null && return 0
  log "creating $PY_VENV with confluent-kafka"
  python3 -m venv "$PY_VENV" >/dev/null
  "$PY_VENV/bin/pip" install -q 'confluent-kafka==2.*' >"$TOOLS_DIR/pip.log" 2>&1 \
    || die "pip install confluent-kafka failed; see $TOOLS_DIR/pip.log"
}

# As root the server runs as `postgres`, which must reach its data directory.
# A clone under a 0700 folder (/root/..., any mktemp -d) is out of its reach:
# grant that one user traversal (x, no read) of each ancestor by ACL. Checked
# before the long tool builds, so a failure comes in seconds, not at the end.
pg_preflight() {
  [ "$(id -u)" = 0 ] || return 0
  id postgres >/dev/null 2>&1 || die "the postgresql package did not create the postgres user"
  mkdir -p "$STACK_DIR/postgres"
  local target path="" part
  target="$(cd "$STACK_DIR/postgres" && pwd -P)"
  IFS=/ read -r -a parts <<<"${target#/}"
  for part in "${parts[@]}"; do
    path="$path/$part"
    runuser -u postgres -- test -x "$path" 2>/dev/null && continue
    if setfacl -m u:postgres:x "$path" 2>/dev/null; then
      log "granted the postgres user traversal of $path (ACL u:postgres:x) to reach $target"
    else
      die "PostgreSQL runs as the postgres user, who cannot enter $path, and setting an ACL there failed; clone into a folder others can traverse, or set MARQUEE_STACK_DIR to one"
    fi
  done
}

install_all() {
  mkdir -p "$TOOLS_DIR"
  # python3-venv first: Debian's python3 cannot create a venv without it.
  apt_install postgresql redis-server clickhouse-server clickhouse-client curl python3 python3-venv acl
  pg_preflight
  python_tools
  cargo_tool "$TANSU_BIN" tansu "$TANSU_VERSION" "$TANSU_FEATURES"
  case "$S3_SERVER" in
    s3s-fs) cargo_tool "$S3S_BIN" s3s-fs "$S3S_VERSION" binary ;;
    garage) cargo_tool "$GARAGE_BIN" garage "$GARAGE_VERSION" "" ;;
    *) die "MARQUEE_S3_SERVER must be s3s-fs or garage, not $S3_SERVER" ;;
  esac
}

# ---------------------------------------------------------------- postgres

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

pg_up() {
  local dir="$STACK_DIR/postgres"
  if pg_ready && [ -f "$dir/data/postmaster.pid" ]; then return 0; fi
  port_open "$PG_PORT" && die "port $PG_PORT is taken by something else (set MARQUEE_PG_PORT)"
  mkdir -p "$dir/run"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $dir/data"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust \
      --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1
  fi
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $dir/run -c max_connections=400 -c fsync=on" \
    start >/dev/null
  wait_for postgres 60 pg_ready
  as_postgres psql -qAt -h "$dir/run" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB')\gexec
SQL
}

pg_down() {
  local dir="$STACK_DIR/postgres"
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
}

# ---------------------------------------------------------------- redis

redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_up() {
  local dir="$STACK_DIR/redis"
  if pid_alive "$dir/redis.pid" && redis_ready; then return 0; fi
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by something else (set MARQUEE_REDIS_PORT)"
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --appendonly yes \
    --save "" --protected-mode yes >/dev/null
  wait_for redis 30 redis_ready
}

stop_pidfile() {
  local pidfile="$1" name="$2"
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not stop in 30s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

redis_down() { stop_pidfile "$STACK_DIR/redis/redis.pid" redis; }

# ---------------------------------------------------------------- clickhouse

ch_ready() { [ "$(curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/ping" 2>/dev/null)" = "Ok." ]; }

ch_up() {
  local dir="$STACK_DIR/clickhouse"
  if pid_alive "$dir/clickhouse.pid" && ch_ready; then return 0; fi
  for p in "$CH_HTTP_PORT" "$CH_TCP_PORT" "$CH_INTERSERVER_PORT"; do
    port_open "$p" && die "port $p is taken by something else (set MARQUEE_CLICKHOUSE_*_PORT)"
  done
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
  # The packaged config points at /var/lib and the default ports; move both here.
  sed -e "s#/var/lib/clickhouse/#$dir/data/#g" \
      -e "s#$dir/data/tmp/#$dir/tmp/#; s#$dir/data/user_files/#$dir/user_files/#" \
      -e "s#$dir/data/format_schemas/#$dir/format_schemas/#" \
      -e "s#/var/log/clickhouse-server/#$dir/log/#g" \
      -e "s#<http_port>8123</http_port>#<http_port>$CH_HTTP_PORT</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$CH_TCP_PORT</tcp_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$CH_INTERSERVER_PORT</interserver_http_port>#" \
      -e "s#<listen_host>::1</listen_host>##" \
      -e "s#<level>warning</level>#<level>information</level>#" \
      /etc/clickhouse-server/config.xml >"$dir/config.xml"
  cp /etc/clickhouse-server/users.xml "$dir/users.xml"
  (cd "$dir" && clickhouse-server --config-file="$dir/config.xml" --pid-file="$dir/clickhouse.pid" --daemon \
    >"$dir/log/stdout.log" 2>&1)
  wait_for clickhouse 60 ch_ready
}

ch_down() { stop_pidfile "$STACK_DIR/clickhouse/clickhouse.pid" clickhouse; }

# ---------------------------------------------------------------- kafka (tansu)

# Tansu says "listening" before it binds and exits 0 when the port is taken,
# so readiness means: our pid is alive and the port accepts connections.
kafka_ready() { pid_alive "$STACK_DIR/kafka/tansu.pid" && port_open "$KAFKA_PORT"; }

# Tansu 0.6's SQLite schema has no index on header (topition, offset_id), yet
# it looks up a record's headers on every fetch of that record: each fetch
# scanned the whole header table, so once records carried headers (the api's
# LZ4 packs carry content-encoding) the broker slowed with every record
# stored, until the api's impression queue overflowed. Idempotent; on a large
# store found running, building the index holds the store's write lock for a
# while (the broker's writes wait). Gives up after about a minute.
kafka_index() {
  python3 - "$STACK_DIR/kafka/run/tansu.db" <<'PY' || log "warning: could not index Tansu's header table; fetches will slow as the store grows"
import sqlite3, sys, time
error = None
for _ in range(25):  # the broker creates its schema as it starts
    try:
        db = sqlite3.connect(sys.argv[1], timeout=2)
        db.execute("CREATE INDEX IF NOT EXISTS marquee_header_record ON header (topition, offset_id)")
        db.commit()
        sys.exit(0)
    except sqlite3.OperationalError as e:
        error = e
        time.sleep(0.2)
print(f"[stack] {error}", file=sys.stderr)
sys.exit(1)
PY
}

kafka_up() {
  local dir="$STACK_DIR/kafka"
  if kafka_ready; then
    kafka_index
    return 0
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by something else (set MARQUEE_KAFKA_PORT)"
  mkdir -p "$dir/run"
  # Tansu resolves sqlite:// paths against its working directory and reads LISTENER_URL, STORAGE_ENGINE, ... and a .env from its working
  # directory: start it from an empty folder with a clean environment.
  (
    cd "$dir/run"
    exec env -i PATH="$PATH" HOME="$HOME" RUST_LOG="${MARQUEE_TANSU_LOG:-warn}" \
      nohup "$TANSU_BIN" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "sqlite://tansu.db" \
      --cluster-id marquee-local \
      >"$dir/tansu.log" 2>&1 &
    echo $! >"$dir/tansu.pid"
  )
  wait_for kafka 60 kafka_ready
  kafka_index
}

kafka_down() { stop_pidfile "$STACK_DIR/kafka/tansu.pid" kafka; }

# ---------------------------------------------------------------- s3

s3_ready() {
  pid_alive "$STACK_DIR/s3/s3.pid" || return 1
  local code; code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")"
  [ "$code" != 000 ]
}

s3_up() {
  local dir="$STACK_DIR/s3"
  s3_ready && return 0
  port_open "$S3_PORT" && die "port $S3_PORT is taken by something else (set MARQUEE_S3_PORT)"
  mkdir -p "$dir/data" "$dir/meta"
  case "$S3_SERVER" in
    s3s-fs)
      nohup "$S3S_BIN" --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_ACCESS_KEY" \
        --secret-key "$S3_SECRET_KEY" "$dir/data" >"$dir/s3.log" 2>&1 &
      echo $! >"$dir/s3.pid"
      ;;
    garage)
      local rpc_port=$((S3_PORT + 1))
      [ -f "$dir/rpc_secret" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$dir/rpc_secret"
      cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(cat "$dir/rpc_secret")"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3_PORT"
TOML
      GARAGE_DEFAULT_ACCESS_KEY="$S3_ACCESS_KEY" GARAGE_DEFAULT_SECRET_KEY="$S3_SECRET_KEY" \
        nohup "$GARAGE_BIN" -c "$dir/garage.toml" server --single-node --default-access-key \
        >"$dir/s3.log" 2>&1 &
      echo $! >"$dir/s3.pid"
      ;;
  esac
  wait_for s3 60 s3_ready
}

s3_down() { stop_pidfile "$STACK_DIR/s3/s3.pid" s3; }

# ---------------------------------------------------------------- commands

print_env() {
  cat <<EOF
MARQUEE_DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
MARQUEE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
MARQUEE_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
MARQUEE_CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP_PORT
MARQUEE_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
MARQUEE_S3_ACCESS_KEY=$S3_ACCESS_KEY
MARQUEE_S3_SECRET_KEY=$S3_SECRET_KEY
MARQUEE_PYTHON=$PY_VENV/bin/python
EOF
}

status() {
  local down=0
  report() {
    if "$2"; then printf '%-10s up    %s\n' "$1" "$3"; else printf '%-10s down  %s\n' "$1" "$3"; down=1; fi
  }
  report postgres pg_ready "postgres://$PG_USER:***@127.0.0.1:$PG_PORT/$PG_DB"
  report redis redis_ready "redis://127.0.0.1:$REDIS_PORT"
  report clickhouse ch_ready "http://127.0.0.1:$CH_HTTP_PORT (native 127.0.0.1:$CH_TCP_PORT)"
  report kafka kafka_ready "127.0.0.1:$KAFKA_PORT (tansu $TANSU_VERSION)"
  report s3 s3_ready "http://127.0.0.1:$S3_PORT ($S3_SERVER)"
  return "$down"
}

up() {
  mkdir -p "$STACK_DIR"
  install_all
  pg_up
  redis_up
  ch_up
  kafka_up # durable: tansu keeps its log in a SQLite file under the stack folder
  s3_up
  status
}

# Drop what earlier test runs left behind. Each test gets databases, a Redis
# namespace and a bucket of its own (test_<id>, test:<id>:, test-<id>) and
# nothing drops them when it ends, so without this the stack grew with every
# run (3 GB of PostgreSQL after a few dozen). scripts/test.sh runs it before
# the tests; it must not run while another test run uses this stack. Kafka
# topics stay: Tansu's store does not give space back for a deleted topic.
prune_tests() {
  local url="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB" n=0 name
  while read -r name; do
    [ -n "$name" ] || continue
    psql -q "$url" -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null
    n=$((n + 1))
  done < <(psql -qAt "$url" -c "SELECT datname FROM pg_database WHERE starts_with(datname, 'test_')")
  while read -r name; do
    [ -n "$name" ] || continue
    curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "DROP DATABASE IF EXISTS \`$name\`" >/dev/null
    n=$((n + 1))
  done < <(curl -fsS "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "SELECT name FROM system.databases WHERE startsWith(name, 'test_')")
  redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern 'test:*' \
    | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" UNLINK >/dev/null
  if [ "$S3_SERVER" = s3s-fs ]; then
    find "$STACK_DIR/s3/data" -mindepth 1 -maxdepth 1 -type d -name 'test-*' -exec rm -rf {} + 2>/dev/null || true
  fi
  log "pruned $n databases of earlier test runs"
}

down() {
  s3_down
  kafka_down
  ch_down
  redis_down
  pg_down
  log "stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  reset) down; rm -rf "$STACK_DIR"; log "wiped $STACK_DIR" ;;
  env) print_env ;;
  kafka-up) mkdir -p "$STACK_DIR" "$TOOLS_DIR"; cargo_tool "$TANSU_BIN" tansu "$TANSU_VERSION" "$TANSU_FEATURES"; kafka_up ;;
  kafka-down) kafka_down ;;
  prune-tests) prune_tests ;;
  *) echo "usage: $0 up|down|status|reset|env|kafka-up|kafka-down|prune-tests" >&2; exit 2 ;;
esac
