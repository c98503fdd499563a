#!/usr/bin/env bash
# Push delivery: chat-pusher beside the web-push npm library, same endpoint,
# same run (see bench/push-bench.mjs for what is measured).
#
#   bench/push-throughput.sh                       # N=2000, M=200, concurrency 1 16 64
#   N=20 M=5 bench/push-throughput.sh              # a smoke run
#
# Needs web-push (package.json devDependencies: npm install), or
# WEB_PUSH_DIR=<dir with node_modules/web-push>.  A throwaway cluster; the
# pusher is built without sanitizers.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
make -s -C pusher chat-pusher ${PG_CONFIG:+PG_CONFIG=$PG_CONFIG}
. tests/lib/cluster.sh
trap 'cluster_stop' EXIT
cluster_start
node bench/push-bench.mjs
