#!/usr/bin/env bash
# A throw-away PostgreSQL cluster on a local port, for the test of sweeps sharing one postgresql://
# storage (tests/test_sweep.py). CI (.ci/run) starts one and stops it at the end; by hand:
#   eval "$(bash scripts/pg_throwaway.sh start)"   # exports MMSENT_TEST_POSTGRES=postgresql://... and MMSENT_PG_DIR
#   .venv/bin/python -m pytest tests/test_sweep.py -k postgres
#   bash scripts/pg_throwaway.sh stop "$MMSENT_PG_DIR"
# Uses Debian's `postgresql` package (installed with apt-get when missing). initdb refuses to run
# as root, so as root the cluster belongs to the package's `postgres` user.
set -euo pipefail
cmd=${1:?start|stop}; port=${PG_PORT:-55432}
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
bin=$(find_bin)
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
case $cmd in
  start)
    if [ -z "$bin" ]; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
      bin=$(find_bin)
    fi
    # a fresh world-traversable folder: the server may run as another user than the caller
    dir=$(mktemp -d /tmp/mmsent-pg.XXXXXX)
    chmod 755 "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >&2
    echo "export MMSENT_TEST_POSTGRES=postgresql://postgres@127.0.0.1:$port/postgres MMSENT_PG_DIR=$dir"
    ;;
  stop)
    dir=${2:?the MMSENT_PG_DIR that start printed}
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start | stop DIR   (PG_PORT=55432)" >&2; exit 2 ;;
esac
