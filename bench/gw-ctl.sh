#!/usr/bin/env bash
# Starts, stops and restarts the gateway under test for bench/run.sh (and for
# chat-load --restart-cmd in the storm scenario).
#
#   gw-ctl.sh start|stop|restart gateway|peer
#
# Reads BENCH_TMP, BENCH_PORT, BENCH_DSN, CHAT_TOKEN_SECRET_FILE and
# BENCH_WORKERS from the environment (BENCH_GATEWAY_BIN: another chat-gateway
# binary, for A/B runs); keeps the pid in $BENCH_TMP/<kind>.pid
# and the log in $BENCH_TMP/<kind>.log.  start returns once /healthz says 200.
# BENCH_GATEWAY_BIN runs another chat-gateway binary (A/B of two builds).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
action=$1 kind=$2
pidfile=$BENCH_TMP/$kind.pid
log=$BENCH_TMP/$kind.log

healthy() {
  local status
  { exec 3<>"/dev/tcp/127.0.0.1/$BENCH_PORT"; } 2>/dev/null || return 1
  printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  read -r -t 2 _ status _ <&3 || status=
  exec 3>&-
  [ "$status" = 200 ]
}

# True while pid runs; a zombie (exited, not yet reaped by init) counts as gone.
alive() {
  local st
  st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

start() {
  ulimit -n 20000 2>/dev/null || true
  case $kind in
    gateway)
      setsid "${BENCH_GATEWAY_BIN:-$top/gateway/chat-gateway}" --listen "127.0.0.1:$BENCH_PORT" --node gwbench \
        --dsn "$BENCH_DSN" --token-secret-file "$CHAT_TOKEN_SECRET_FILE" \
        --workers "${BENCH_WORKERS:-1}" --pool "${BENCH_POOL:-4}" --rate 100000 \
        ${BENCH_GATEWAY_ARGS:-} >>"$log" 2>&1 </dev/null &
      ;;
    peer)
      setsid node "$top/bench/peers/node-relay/relay.js" --listen "127.0.0.1:$BENCH_PORT" --node peerbench \
        --dsn "$BENCH_DSN" --token-secret-file "$CHAT_TOKEN_SECRET_FILE" \
        --pool "${BENCH_POOL:-4}" --rate 100000 >>"$log" 2>&1 </dev/null &
      ;;
    *) echo "gw-ctl: unknown kind $kind" >&2; exit 2 ;;
  esac
  echo $! >"$pidfile"
  for _ in $(seq 1 300); do
    healthy && return 0
    alive "$(cat "$pidfile")" || { echo "gw-ctl: $kind exited; log:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.02
  done
  echo "gw-ctl: $kind not healthy after 6 s" >&2
  exit 1
}

stop() {
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
  for _ in $(seq 1 500); do
    alive "$pid" || { rm -f "$pidfile"; return 0; }
    sleep 0.01
  done
  kill -KILL "$pid" 2>/dev/null || true
  # workers of a killed master
  pkill -KILL -s "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case $action in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "usage: gw-ctl.sh start|stop|restart gateway|peer" >&2; exit 2 ;;
esac
