#!/usr/bin/env bash
# The soak: one gateway under moderate steady load for a long time (30
# minutes by default), sampled every 10 s: gateway RSS and open fds,
# PostgreSQL backends, send latency (p50, p99), acks and error frames.
# At the end every device syncs and the fault checker judges the run
# (nothing lost, nothing duplicated).  Writes bench/results/soak-<date>.csv
# and a plot of the four series over time, soak-<date>.svg.
#
#   bench/soak.sh [SECONDS]          default 1800
# Env: SOAK_USERS (20), SOAK_DEVICES per user (2), SOAK_PERIOD ms between a
# device's sends (1000), SOAK_SAMPLE seconds between samples (10),
# GATEWAY_BIN.  Uses the test cluster of tests/lib/cluster.sh (started and
# stopped here unless tests/run.sh's is there).
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
. tests/lib/cluster.sh

export SOAK_SECONDS=${1:-1800}
export GATEWAY_BIN=${GATEWAY_BIN:-gateway/chat-gateway}
export GW_LOG_DIR=${GW_LOG_DIR:-test-artifacts/soak}
[ -x "$GATEWAY_BIN" ] || { echo "soak: $GATEWAY_BIN is not built (make)" >&2; exit 1; }
[ -d node_modules/ws ] || npm ci --no-audit --no-fund --loglevel=error || exit 1
mkdir -p bench/results "$GW_LOG_DIR"
export SOAK_OUT=bench/results/soak-$(date -u +%Y-%m-%dT%H%M%SZ)

trap 'kill "$soak_pid" 2>/dev/null; wait "$soak_pid" 2>/dev/null; cluster_detach' EXIT
trap 'exit 130' INT TERM
cluster_attach || { echo "soak: could not start the cluster" >&2; exit 1; }
export PSQL=$PGBIN/psql
# Bounded: the run plus 2 minutes for set-up and the final sync.
timeout -k 5 $((SOAK_SECONDS + 120)) node bench/soak.mjs &
soak_pid=$!
wait "$soak_pid"
