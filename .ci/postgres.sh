#!/usr/bin/env bash
# Start a private, throw-away PostgreSQL server for the results-database tests and print the
# SQLAlchemy URL to use (on stdout, last line). Debian's postgresql is installed if missing.
# Usage: url=$(bash .ci/postgres.sh start DIR); ...; bash .ci/postgres.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
port=${CIFARBENCH_PG_PORT:-55432}
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ "$cmd" = stop ]; then
  [ -d "$dir/data" ] && runuser -u postgres -- "$(pgbin)/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
  exit 0
fi
t0=$(date +%s%N)
if [ -z "$(pgbin)" ]; then
  apt-get install -y -q --no-install-recommends postgresql >&2
fi
t1=$(date +%s%N)
mkdir -p "$dir" && chown postgres "$dir"
runuser -u postgres -- "$(pgbin)/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$(pgbin)/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-k $dir -p $port -c listen_addresses=" start >/dev/null
t2=$(date +%s%N)
echo "postgresql: install $(( (t1 - t0) / 1000000 )) ms, initdb + start $(( (t2 - t1) / 1000000 )) ms" >&2
echo "postgresql+psycopg://postgres@/postgres?host=$dir&port=$port"
