#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for the coordinator's tests (Debian's package,
# binaries in /usr/lib/postgresql/15/bin), on 127.0.0.1 at a free port, with
# fsync off.  Data, socket and log live in one temp dir that `stop` removes.
#
#   eval "$(scripts/test-postgres.sh start)"   start; exports FJORD_TEST_POSTGRES_URL
#                                              and FJORD_PG_DIR (the server's dir)
#   scripts/test-postgres.sh stop [DIR]        stop the server in DIR (default
#                                              $FJORD_PG_DIR) and delete DIR
#   scripts/test-postgres.sh run CMD [ARG...]  start, run CMD with the variables
#                                              exported, stop (always); exits
#                                              with CMD's status
#
# `start` prints only the export lines on stdout; messages go to stderr.  The
# URL names the database `fjord` (user `postgres`, trust auth); the tests
# create a database per test from it.  The server also accepts TLS, with a
# certificate for 127.0.0.1 signed by a throwaway CA whose PEM file is exported
# as FJORD_TEST_POSTGRES_CA (for the coordinator's sslmode=require tests).
#
# PostgreSQL 15 is installed with apt-get when missing and we are root (set
# FJORD_PG_NO_INSTALL=1 to refuse instead).  initdb refuses to run as root, so
# the server runs as the `postgres` user.  PG_BIN overrides the binaries' dir.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

say() { echo "[test-postgres] $*" >&2; }
die() { say "error: $*"; exit 1; }

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_installed() {
    [ -x "$PG_BIN/initdb" ] && return 0
    if [ "${FJORD_PG_NO_INSTALL:-0}" = 1 ] || [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        die "$PG_BIN/initdb not found; install PostgreSQL 15 (apt-get install -y postgresql-15) or set PG_BIN"
    fi
    say "PostgreSQL 15 missing: apt-get install -y postgresql-15"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >&2
    [ -x "$PG_BIN/initdb" ] || die "postgresql-15 installed but $PG_BIN/initdb is still missing"
}

port_free() {
    # Free when nothing accepts a connection on it.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    ensure_installed
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        die "no 'postgres' user to run the server as (it comes with the postgresql-common package)"
    fi
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fjord-pg.XXXXXX")
    chmod 700 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 \
        --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; die "initdb failed"; }

    make_certs "$dir"
    local port="" attempt
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        port_free "$port" || continue
        if as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start -o \
            "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$dir' \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=64MB \
             -c ssl=on -c ssl_cert_file='$dir/server.crt' -c ssl_key_file='$dir/server.key'" \
             >/dev/null 2>&1; then
            break
        fi
        say "start on port $port failed (attempt $attempt):"
        tail -n 5 "$dir/server.log" >&2 || true
        port=""
    done
    if [ -z "$port" ]; then
        rm -rf "$dir"
        die "could not start PostgreSQL"
    fi
    echo "$port" >"$dir/port"
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres fjord \
        || { stop "$dir"; die "createdb failed"; }
    local url="postgres://postgres@127.0.0.1:$port/fjord"
    echo "$url" >"$dir/url"
    say "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') up at $url (dir $dir)"
    echo "export FJORD_TEST_POSTGRES_URL='$url'"
    echo "export FJORD_PG_DIR='$dir'"
    echo "export FJORD_TEST_POSTGRES_CA='$dir/ca.pem'"
}

# A CA and a server certificate for 127.0.0.1 signed by it, in DIR.
make_certs() {
    local dir=$1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=fjord test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.pem" >/dev/null 2>&1 \
        || die "openssl: making the test CA failed"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1 \
        || die "openssl: making the server key failed"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.crt" >/dev/null 2>&1 \
        || die "openssl: signing the server certificate failed"
    chmod 600 "$dir/server.key"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/server.key" "$dir/server.crt"
    return 0
}

stop() {
    local dir=${1:-${FJORD_PG_DIR:-}}
    [ -n "$dir" ] || die "stop: which server? pass its dir or set FJORD_PG_DIR"
    [ -d "$dir" ] || { say "nothing to stop: $dir does not exist"; return 0; }
    [ -f "$dir/data/PG_VERSION" ] || die "stop: $dir is not a server dir made by this script"
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 \
            || say "pg_ctl stop failed (already stopped?)"
    fi
    rm -rf "$dir"
    say "stopped and removed $dir"
}

run() {
    [ $# -gt 0 ] || die "run: which command?"
    local exports
    exports=$(start)
    eval "$exports"
    trap 'stop "$FJORD_PG_DIR"' EXIT
    trap 'exit 130' INT TERM
    local status=0
    "$@" || status=$?
    return "$status"
}

case "${1:-}" in
    start) start ;;
    stop) shift; stop "$@" ;;
    run) shift; run "$@" ;;
    -h|--help|"") sed -n '2,21p' "$0" ;;
    *) die "unknown command '$1' (see --help)" ;;
esac
