#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and CI (Debian's `postgresql` package), on a loopback port.
#
#   scripts/pg.sh install        # apt-get install postgresql if its binaries are missing (root; no cluster)
#   scripts/pg.sh start [DIR]    # initdb into DIR (default: a new /tmp/pumpl-pg.XXXXXX), start, create db
#                                # `pumpl`; prints `export PUMPL_PG_...=...` lines (eval them) and writes
#                                # them to DIR/env
#   scripts/pg.sh stop DIR       # stop the server's process group (SIGINT = fast shutdown, then SIGKILL)
#                                # and delete DIR
#
# The server runs as the `postgres` user when we are root (PostgreSQL refuses to run as root), in its own
# session (setsid) so that `stop` can signal the whole process group. Loopback only, trust auth, fsync off:
# it is a test fixture, not a deployment (see docs/deployment.md for the team set-up).
set -euo pipefail

pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

as_pg() {  # run a command as the postgres user when we are root
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

cmd_install() {
  if pg_bindir >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "pg.sh: PostgreSQL binaries not found and not root; install Debian's 'postgresql' package" >&2
    return 1
  fi
  # No default cluster: we initdb our own, and a packaged cluster would grab port 5432.
  mkdir -p /etc/postgresql-common
  grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null ||
    echo "create_main_cluster = false" >>/etc/postgresql-common/createcluster.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  pg_bindir >/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_start() {
  local dir="${1:-}" bindir port pgid t0 launcher
  bindir="$(pg_bindir)" || {
    echo "pg.sh: PostgreSQL binaries not found; run 'scripts/pg.sh install' (root) first" >&2
    return 1
  }
  [ -n "$dir" ] || dir="$(mktemp -d /tmp/pumpl-pg.XXXXXX)"
  mkdir -p "$dir"
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  t0=$(date +%s.%N)
  as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  port="$(free_port)"
  # setsid: the postmaster leads its own session and process group; `stop` signals that group.
  as_pg setsid "$bindir/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
    </dev/null >"$dir/server.log" 2>&1 &
  launcher=$!
  for _ in $(seq 1 150); do  # up to 30 s
    if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
      break
    fi
    if ! kill -0 "$launcher" 2>/dev/null && [ ! -f "$dir/data/postmaster.pid" ]; then
      echo "pg.sh: postgres exited during start-up:" >&2
      tail -20 "$dir/server.log" >&2
      return 1
    fi
    sleep 0.2
  done
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres || {
    echo "pg.sh: postgres not ready after 30 s" >&2
    tail -20 "$dir/server.log" >&2
    [ -f "$dir/data/postmaster.pid" ] && head -1 "$dir/data/postmaster.pid" >"$dir/pgid"
    cmd_stop "$dir"
    return 1
  }
  # The postmaster's pid (= its process group: setsid). Its children call setsid() themselves and exit
  # when the postmaster does, so stopping the postmaster stops the server.
  pgid="$(head -1 "$dir/data/postmaster.pid")"
  echo "$pgid" >"$dir/pgid"
  "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres pumpl
  cat >"$dir/env" <<EOF
export PUMPL_PG_HOST=127.0.0.1
export PUMPL_PG_PORT=$port
export PUMPL_PG_USER=postgres
export PUMPL_PG_DB=pumpl
export PUMPL_PG_DIR=$dir
EOF
  cat "$dir/env"
  echo "pg.sh: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') up on 127.0.0.1:$port" \
    "(data $dir, pgid $pgid) in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" >&2
}

cmd_stop() {
  local dir="${1:?usage: pg.sh stop DIR}" pgid
  if [ -f "$dir/pgid" ]; then
    pgid="$(cat "$dir/pgid")"
    kill -INT -- "-$pgid" 2>/dev/null || true  # SIGINT to the postmaster's group = fast shutdown
    for _ in $(seq 1 100); do                  # up to 10 s
      kill -0 -- "-$pgid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 -- "-$pgid" 2>/dev/null; then
      echo "pg.sh: postgres (pgid $pgid) still up after 10 s: SIGKILL" >&2
      kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
  fi
  case "$dir" in
    /tmp/pumpl-pg.* | "${TMPDIR:-/tmp}"/*) rm -rf "$dir" ;;
    *) echo "pg.sh: left $dir in place (not under /tmp)" >&2 ;;
  esac
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *)
    echo "usage: scripts/pg.sh install | start [DIR] | stop DIR" >&2
    exit 2
    ;;
esac
