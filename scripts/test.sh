#!/usr/bin/env bash
# The one command that runs every test: brings the local stack up (installing
# what is missing), points the tests at it, and runs the whole workspace's
# tests against the real servers. Exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

started=$SECONDS
# Style gates first: they fail in seconds where the tests take minutes.
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] style gates passed after $((SECONDS - started))s"
scripts/stack.sh up
scripts/stack.sh prune-tests
# The dashboard's browser test drives Debian's Chromium headless.
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium for the dashboard browser test"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi
set -a
# shellcheck disable=SC1090
source <(scripts/stack.sh env)
set +a
echo "[test] stack ready after $((SECONDS - started))s; running the workspace tests"

# Tests share the stack but each gets its own databases, topics, Redis
# namespace and bucket; two threads match the machine's two cores.
cargo test --workspace --all-targets --locked -- --test-threads="${MARQUEE_TEST_THREADS:-2}"
cargo test --workspace --doc --locked
echo "[test] all tests passed in $((SECONDS - started))s"
