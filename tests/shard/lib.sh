# A sharded pgchat on one machine: two clusters, four partitions, one proxy
# database.  Sourced by tests/shard/run.sh and scripts/demo-sharded.sh after
# tests/lib/cluster.sh.
#
#   cluster A ($SHARD_DIR/a): databases part0, part2 and the proxy (chat_proxy)
#   cluster B ($SHARD_DIR/b): databases part1, part3
#
# Partition p lives on cluster A when p is even, so every conversation of
# partitions 1 and 3 is on B: restarting B leaves partitions 0 and 2 (and
# the proxy) up.  shard_start exports SHARD_PORT_A/B, SHARD_PROXY_DSN and
# SHARD_PART_DSN_0..3.

SHARD_PARTS=4

# Makes and starts one cluster of the deployment: shard_cluster NAME PORT
shard_cluster() {
  local dir=$SHARD_DIR/$1 port=$2
  mkdir -p "$dir"; chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
  cluster_init "$dir" "$port" || return 1
  cat >>"$dir/data/postgresql.conf" <<CONF
shared_preload_libraries = 'chat'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
chat.token_secret = '$(cat "$CHAT_TOKEN_SECRET_FILE")'
log_min_messages = warning
CONF
  shard_ctl "$1" start
}

# pg_ctl on one cluster of the deployment: shard_ctl a|b start|stop|restart
shard_ctl() {
  local mode=()
  [ "$2" = stop ] && mode=(-m fast)
  as_owner "$PGBIN/pg_ctl" -D "$SHARD_DIR/$1/data" -l "$SHARD_DIR/$1/postgres.log" -w -t 60 "${mode[@]}" "$2" >/dev/null
}

# The cluster of partition p: a for even, b for odd.
shard_cluster_of() { if [ $(($1 % 2)) -eq 0 ]; then echo a; else echo b; fi; }

# psql on a database of the deployment: shard_psql a|b DB args...
shard_psql() {
  local c=$1 db=$2; shift 2
  local port; if [ "$c" = a ]; then port=$SHARD_PORT_A; else port=$SHARD_PORT_B; fi
  "$PGBIN/psql" -qXAt -v ON_ERROR_STOP=1 -h "$SHARD_DIR/$c" -p "$port" -U postgres -d "$db" "$@"
}

# Starts both clusters, makes the four partitions and the proxy.
shard_start() {
  SHARD_DIR=${SHARD_DIR:-$(mktemp -d /tmp/pgchat-shard.XXXXXX)}
  chmod 755 "$SHARD_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$SHARD_DIR"
  export SHARD_DIR
  if [ -z "${CHAT_TOKEN_SECRET_FILE:-}" ] || [ ! -f "$CHAT_TOKEN_SECRET_FILE" ]; then
    export CHAT_TOKEN_SECRET_FILE=$SHARD_DIR/token-secret
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$CHAT_TOKEN_SECRET_FILE"
    chmod 644 "$CHAT_TOKEN_SECRET_FILE"
  fi
  export SHARD_PORT_A=${SHARD_PORT_A:-$(free_port)} SHARD_PORT_B=${SHARD_PORT_B:-$(free_port)}
  shard_cluster a "$SHARD_PORT_A" || return 1
  shard_cluster b "$SHARD_PORT_B" || return 1
  local p c port partitions=()
  for p in $(seq 0 $((SHARD_PARTS - 1))); do
    c=$(shard_cluster_of "$p")
    if [ "$c" = a ]; then port=$SHARD_PORT_A; else port=$SHARD_PORT_B; fi
    shard_psql "$c" postgres -c "CREATE DATABASE part$p" || return 1
    shard_psql "$c" postgres -c "ALTER DATABASE part$p SET chat.partitions = $SHARD_PARTS" \
                             -c "ALTER DATABASE part$p SET chat.partition = $p" || return 1
    shard_psql "$c" "part$p" -c "SET client_min_messages = warning" -c "CREATE EXTENSION chat" || return 1
    export "SHARD_PART_DSN_$p=host=127.0.0.1 port=$port dbname=part$p user=postgres"
    partitions+=("host=127.0.0.1 port=$port dbname=part$p user=postgres")
  done
  shard_psql a postgres -c "CREATE DATABASE proxy" || return 1
  shard_psql a proxy -c "SET client_min_messages = warning" -c "CREATE EXTENSION chat_proxy CASCADE" || return 1
  local arr
  arr=$(printf "'%s'," "${partitions[@]}"); arr="ARRAY[${arr%,}]"
  shard_psql a proxy -c "SELECT chat_proxy.configure($arr)" >/dev/null || return 1
  export SHARD_PROXY_DSN="host=127.0.0.1 port=$SHARD_PORT_A dbname=proxy user=postgres"
}

# Stops both clusters and removes the directory.
shard_stop() {
  [ -n "${SHARD_DIR:-}" ] || return 0
  local c
  for c in a b; do
    [ -d "$SHARD_DIR/$c/data" ] && as_owner "$PGBIN/pg_ctl" -D "$SHARD_DIR/$c/data" -m immediate -w stop >/dev/null 2>&1
  done
  rm -rf "$SHARD_DIR"
}
