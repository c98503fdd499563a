# Throwaway PostgreSQL cluster for tests: sourced by tests/run.sh and by stage
# scripts run alone.  cluster_start exports PGHOST/PGPORT/PGUSER and friends;
# cluster_stop stops it and removes its directory.  A stage script calls
# cluster_attach (the harness's cluster, or one of its own) and cluster_detach
# on exit.

PGBIN=${PGBIN:-$(${PG_CONFIG:-pg_config} --bindir)}
export PGBIN  # for the node test programs too (tests/faults)

# Runs a command as the cluster's owner (initdb refuses to run as root).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Prints a TCP port on 127.0.0.1 that nothing listens on, below the kernel's
# ephemeral range: a port a load generator's client socket happens to hold
# would refuse a listener even though nothing listens on it.
free_port() {
  local p low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 12000 ] || low=32768
  for _ in $(seq 1 200); do
    p=$(( (RANDOM % (low - 11000)) + 10000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}

# Makes a cluster in DIR/data (initdb as the cluster's owner, its log in
# DIR) listening on PORT at LISTEN (default 127.0.0.1; '' for the unix socket
# only), with its socket in DIR; callers append their own settings to
# DIR/data/postgresql.conf.  cluster_init DIR PORT [LISTEN]
cluster_init() {
  local dir=$1 port=$2 listen=${3-127.0.0.1}
  as_owner "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; return 1; }
  cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '$listen'
port = $port
unix_socket_directories = '$dir'
CONF
}

cluster_start() {
  CHAT_TEST_TMP=$(mktemp -d /tmp/pgchat-test.XXXXXX)
  chmod 755 "$CHAT_TEST_TMP"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$CHAT_TEST_TMP"
  export CHAT_TEST_TMP
  export CHAT_TEST_PGDATA=$CHAT_TEST_TMP/data
  export PGHOST=$CHAT_TEST_TMP PGPORT=$(free_port) PGUSER=postgres PGDATABASE=postgres
  export CHAT_TOKEN_SECRET_FILE=$CHAT_TEST_TMP/token-secret
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$CHAT_TOKEN_SECRET_FILE"
  chmod 644 "$CHAT_TOKEN_SECRET_FILE"

  cluster_init "$CHAT_TEST_TMP" "$PGPORT" || return 1
  cat >>"$CHAT_TEST_PGDATA/postgresql.conf" <<CONF
shared_preload_libraries = 'chat'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
chat.token_secret = '$(cat "$CHAT_TOKEN_SECRET_FILE")'
log_min_messages = warning
CONF
  cluster_ctl start
}

# Uses the cluster of tests/run.sh when there is one (it exports CHAT_TEST_PGDATA,
# PGHOST/PGPORT, CHAT_TOKEN_SECRET_FILE) and it answers; otherwise starts a
# throwaway cluster, which cluster_detach stops again.  Stage scripts call it
# so that they run the same under the harness and alone.
cluster_attach() {
  CHAT_OWN_CLUSTER=
  if [ -n "${CHAT_TEST_PGDATA:-}" ] && "$PGBIN/pg_isready" -q; then return 0; fi
  CHAT_OWN_CLUSTER=1
  cluster_start
}

# Stops the cluster cluster_attach started (never the harness's).
cluster_detach() {
  if [ -n "${CHAT_OWN_CLUSTER:-}" ]; then cluster_stop; fi
}

# The preamble of a stage script that works in files: cluster_attach, a
# scratch directory $work (/tmp/NAME.XXXXXX, readable by the server) and an
# EXIT trap removing it and detaching.  stage_begin NAME
stage_begin() {
  cluster_attach
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$work"
  trap 'rm -rf "$work"; cluster_detach' EXIT
}

# pg_ctl on the test cluster: cluster_ctl start|stop|restart
cluster_ctl() {
  as_owner "$PGBIN/pg_ctl" -D "$CHAT_TEST_PGDATA" -l "$CHAT_TEST_TMP/postgres.log" -w -t 60 "$@" >/dev/null
}

cluster_stop() {
  [ -n "${CHAT_TEST_PGDATA:-}" ] || return 0
  as_owner "$PGBIN/pg_ctl" -D "$CHAT_TEST_PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$CHAT_TEST_TMP"
}

# Creates database $1 with the chat extension (and pgtap when $2 = tap).
new_db() {
  "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS \"$1\"" -c "CREATE DATABASE \"$1\"" >/dev/null
  "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -d "$1" -c "CREATE EXTENSION chat" >/dev/null
  if [ "${2:-}" = tap ]; then "$PGBIN/psql" -qX -v ON_ERROR_STOP=1 -d "$1" -c "CREATE EXTENSION pgtap" >/dev/null; fi
}
