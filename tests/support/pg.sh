#!/usr/bin/env bash
# A throw-away PostgreSQL server for followup's tests (Debian's packages).
#
#   tests/support/pg.sh start DIR PORT   init DIR if needed, start the server on
#                                        127.0.0.1:PORT, print its URL on stdout
#   tests/support/pg.sh stop DIR         stop it (no-op if it is not running)
#   tests/support/pg.sh status DIR       exit 0 if it runs, print its URL
#
# DIR is the data directory itself (created, owned by the postgres user, and
# holding the unix socket and server.log). Debian's postgres refuses to run as
# root, so as root every server command runs as the postgres user via runuser;
# as any other user it runs as that user. It is a test server: trust auth for
# local and 127.0.0.1 connections, fsync/synchronous_commit/full_page_writes
# off, max_connections=200. Role `followup` (password `followup`, CREATEDB,
# allowed to create schemas in database `postgres` and tables in its public
# schema) is created; the URL printed is
#   postgres://followup:followup@127.0.0.1:PORT/postgres
# `start` on a running server only prints the URL. Binaries: the highest
# version under /usr/lib/postgresql/*/bin, or $PG_BIN if set.
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }
usage() { die "usage: $0 start DIR PORT | stop DIR | status DIR"; }

pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$d" && -x "$d/initdb" ]] || die "no PostgreSQL found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    echo "$d"
}

if [[ $(id -u) -eq 0 ]]; then
    PG_USER=postgres
    id -u "$PG_USER" >/dev/null 2>&1 || die "user $PG_USER does not exist (apt-get install postgresql)"
    as_pg() { (cd / && runuser -u "$PG_USER" -- "$@"); }
else
    PG_USER=$(id -un)
    as_pg() { (cd / && "$@"); }
fi

# Keep the caller's libpq settings from steering psql/pg_ctl elsewhere.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGSERVICE PGOPTIONS || true

url() { echo "postgres://followup:followup@127.0.0.1:$1/postgres"; }

is_running() { as_pg "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; }

# Port of the running server, from postmaster.pid (4th line).
running_port() { sed -n 4p "$DIR/postmaster.pid" 2>/dev/null || true; }

psql_pg() {
    as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"
}

cmd=${1:-}
[[ -n "$cmd" ]] || usage
DIR=${2:-}
[[ -n "$DIR" ]] || usage
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
BIN=$(pg_bin)

case "$cmd" in
start)
    PORT=${3:-}
    [[ "$PORT" =~ ^[0-9]+$ ]] || usage
    if [[ -d "$DIR" ]] && is_running; then
        rp=$(running_port)
        [[ "$rp" == "$PORT" ]] || die "server in $DIR already runs on port $rp, not $PORT"
        url "$PORT"
        exit 0
    fi
    if [[ ! -f "$DIR/PG_VERSION" ]]; then
        mkdir -p "$DIR"
        [[ -z "$(ls -A "$DIR")" ]] || die "$DIR is not empty and holds no PostgreSQL data directory"
        chown "$PG_USER": "$DIR"
        chmod 700 "$DIR"
        log=$(mktemp)
        if ! as_pg "$BIN/initdb" -D "$DIR" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$log" 2>&1; then
            cat "$log" >&2; rm -f "$log"; die "initdb failed"
        fi
        rm -f "$log"
        cat >>"$DIR/postgresql.conf" <<EOF

# --- followup test server (tests/support/pg.sh) ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        # initdb --auth=trust already trusts local and 127.0.0.1/::1; say so explicitly.
        cat >"$DIR/pg_hba.conf" <<'EOF'
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
host    all       all   ::1/128       trust
local   replication all               trust
host    replication all 127.0.0.1/32  trust
EOF
        chown "$PG_USER": "$DIR/pg_hba.conf"
    fi
    if ! as_pg "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 -o "-p $PORT" start >/dev/null 2>&1; then
        tail -n 30 "$DIR/server.log" >&2 2>/dev/null || true
        die "pg_ctl start failed (is port $PORT free?)"
    fi
    psql_pg -d postgres <<'EOF' >/dev/null
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'followup') THEN
        CREATE ROLE followup LOGIN PASSWORD 'followup' CREATEDB;
    ELSE
        ALTER ROLE followup LOGIN PASSWORD 'followup' CREATEDB;
    END IF;
END
$$;
GRANT CREATE ON DATABASE postgres TO followup;
GRANT CREATE ON SCHEMA public TO followup;
EOF
    url "$PORT"
    ;;
stop)
    [[ -d "$DIR" ]] || exit 0
    if is_running; then
        as_pg "$BIN/pg_ctl" -D "$DIR" -m fast -w -t 60 stop >/dev/null
    fi
    ;;
status)
    [[ -d "$DIR" ]] && is_running || { echo "not running" >&2; exit 3; }
    url "$(running_port)"
    ;;
*)
    usage
    ;;
esac
