#!/usr/bin/env bash
# Realtime notifications observed by a real listener (listen_test.c), once
# with chat.fanout_mode = direct and once with the notifier worker.
# Uses the harness's cluster or starts its own (cluster_attach).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cd "$top"
. tests/lib/cluster.sh
trap cluster_detach EXIT
cluster_attach
bin=${CHAT_TEST_TMP:-/tmp}/listen_test
gcc -Wall -Wextra -Werror -O1 -o "$bin" "$here/listen_test.c" -I"$(${PG_CONFIG:-pg_config} --includedir)" -L"$(${PG_CONFIG:-pg_config} --libdir)" -lpq -lcrypto
new_db chat_rt
"$bin" chat_rt direct worker
