#!/usr/bin/env bash
# Makes a private, relocated copy of Debian's PostgreSQL 15 under DIR so that
# several working trees can `make install` and test side by side without
# sharing one server directory:
#
#   scripts/private-pg.sh /tmp/pg-mine
#   make install PG_CONFIG=/tmp/pg-mine/lib/postgresql/15/bin/pg_config
#   PGBIN=/tmp/pg-mine/lib/postgresql/15/bin PG_CONFIG=... tests/run.sh
#
# PostgreSQL finds its share and lib directories relative to its binaries,
# so the copy works as long as DIR stands for /usr.
set -euo pipefail
dir=${1:?usage: private-pg.sh DIR}
if [ ! -x "$dir/lib/postgresql/15/bin/postgres" ]; then
  mkdir -p "$dir/lib/postgresql" "$dir/share/postgresql" "$dir/include"
  cp -a /usr/lib/postgresql/15 "$dir/lib/postgresql/"
  cp -a /usr/share/postgresql/15 "$dir/share/postgresql/"
  cp -a /usr/include/postgresql "$dir/include/"
  chmod -R a+rX "$dir"
fi
echo "$dir/lib/postgresql/15/bin"
