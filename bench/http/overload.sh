#!/usr/bin/env bash
# Load shedding at ten times capacity, measured with wrk against the release `tidemark serve`
# on embedded PostgreSQL. Prints one RESULT line per run; the same binary and machine serve
# every run, so the lines compare as ratios.
#
# Usage: cargo build --release -p tidemark-api && bench/http/overload.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-20}"
binary="${TIDEMARK_BINARY:-target/release/tidemark}"
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)"; exit 1; }
ulimit -n "$(ulimit -Hn)"
unset DATABASE_URL

run_server() { # $1: admission budget in ms
  data_dir="$(mktemp -d)"; chmod o+x "$data_dir"
  "$binary" serve --insecure-dev --listen 127.0.0.1:18080 --data-dir "$data_dir/pg" \
    --admission-budget-ms "$1" --no-projections >"$data_dir/server.log" 2>&1 &
  server=$!
  for _ in $(seq 1 300); do
    curl -fsS http://127.0.0.1:18080/ready >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the server did not become ready"; cat "$data_dir/server.log"; exit 1
}

stop_server() {
  kill -TERM "$server"; wait "$server" || true
  rm -rf "$data_dir"
}

load() { # $1: label, $2: connections
  echo -n "$1 connections=$2 "
  wrk -t2 -c"$2" -d"${seconds}s" --timeout 30s -s bench/http/append.lua \
    http://127.0.0.1:18080 | grep RESULT
}

run_server 1000
load "warm-up" 64 >/dev/null
load "admission=1000ms" 64
load "admission=1000ms" 640
load "admission=1000ms" 2000
load "admission=1000ms" 6000
load "admission=1000ms" 12000
stop_server

run_server 0
load "warm-up" 64 >/dev/null
load "admission=off" 64
load "admission=off" 640
load "admission=off" 2000
load "admission=off" 6000
load "admission=off" 12000
stop_server
