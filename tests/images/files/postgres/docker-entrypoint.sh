#!/usr/bin/env bash
# Stand-in for the official postgres image's entrypoint (docker-library/postgres, 17/trixie).
# Written for this project from the documented behaviour (tests/images/README.md):
#   - POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB / POSTGRES_INITDB_ARGS, each also as *_FILE
#     (setting both is an error); POSTGRES_HOST_AUTH_METHOD; POSTGRES_INITDB_WALDIR; PGDATA.
#   - Initialise only when $PGDATA/PG_VERSION is missing; run /docker-entrypoint-initdb.d once
#     against a socket-only temporary server; then exec postgres with the given arguments.
#   - Started as root: fix ownership, then re-exec as postgres (uid 999) through gosu.
set -Eeo pipefail

log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Reads VAR from VAR or from the file named by VAR_FILE (trailing newlines dropped).
env_or_file() {
    local name=$1 default=${2:-}
    local file_name="${name}_FILE"
    local value=${!name:-} file=${!file_name:-}
    if [ -n "$value" ] && [ -n "$file" ]; then
        die "both $name and $file_name are set (but are exclusive)"
    fi
    if [ -n "$file" ]; then
        value=$(< "$file")
    elif [ -z "$value" ]; then
        value=$default
    fi
    export "$name"="$value"
    unset "$file_name"
}

read_settings() {
    env_or_file POSTGRES_PASSWORD
    env_or_file POSTGRES_USER postgres
    env_or_file POSTGRES_DB "$POSTGRES_USER"
    env_or_file POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=}"
    export PGDATA=${PGDATA:-/var/lib/postgresql/data}
    if [ -s "$PGDATA/PG_VERSION" ]; then
        DATABASE_EXISTS=yes
    else
        DATABASE_EXISTS=
    fi
}

prepare_directories() {
    local uid
    uid=$(id -u)
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    mkdir -p /var/run/postgresql || :
    chmod 03775 /var/run/postgresql || :
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        [ "$uid" = 0 ] && find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres '{}' +
        chmod 700 "$POSTGRES_INITDB_WALDIR"
    fi
    if [ "$uid" = 0 ]; then
        find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
        find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
    fi
}

require_password() {
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<'EOM'
error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value
       for the superuser, or set POSTGRES_HOST_AUTH_METHOD=trust to allow all connections
       without a password (not recommended).
EOM
        exit 1
    fi
    if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
        log "warning: POSTGRES_HOST_AUTH_METHOD=trust: every connection is allowed without a password"
    fi
}

run_initdb() {
    local waldir=()
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        waldir=(--waldir "$POSTGRES_INITDB_WALDIR")
    fi
    # POSTGRES_INITDB_ARGS is shell words (quotes allowed), as upstream evaluates it.
    eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"$POSTGRES_INITDB_ARGS"' "${waldir[@]}"'
}

# Network clients need a password: append the catch-all host rule (local stays as initdb left it).
append_host_rule() {
    local method=$POSTGRES_HOST_AUTH_METHOD
    if [ -z "$method" ]; then
        method=$(postgres -C password_encryption "$@")
    fi
    {
        printf '\n'
        if [ "$method" = trust ]; then
            printf '# warning: trust is enabled for all connections\n'
        fi
        printf 'host all all all %s\n' "$method"
    } >> "$PGDATA/pg_hba.conf"
}

start_temp_server() {
    local args=("$@" -c "listen_addresses=" -p "${PGPORT:-5432}")
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -o "$(printf '%q ' "${args[@]}")" -w start
}

stop_temp_server() {
    PGUSER="${PGUSER:-$POSTGRES_USER}" pg_ctl -D "$PGDATA" -m fast -w stop
}

# Available to sourced initdb scripts, as upstream: docker_process_sql [psql args] < file
docker_process_sql() {
    local db_args=()
    if [ -n "$POSTGRES_DB" ]; then
        db_args=(--dbname "$POSTGRES_DB")
    fi
    PGHOST= PGHOSTADDR= psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password \
        --no-psqlrc "${db_args[@]}" "$@"
}

create_database() {
    if [ "$POSTGRES_DB" = postgres ]; then
        return
    fi
    local exists
    exists=$(POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" --tuples-only <<'EOSQL'
SELECT 1 FROM pg_database WHERE datname = :'db' ;
EOSQL
)
    if [ -z "${exists//[[:space:]]/}" ]; then
        POSTGRES_DB= docker_process_sql --dbname postgres --set db="$POSTGRES_DB" <<'EOSQL'
CREATE DATABASE :"db" ;
EOSQL
        log "CREATE DATABASE"
    fi
}

run_init_scripts() {
    local f
    for f in "$@"; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    log "$0: running $f"
                    "$f"
                else
                    log "$0: sourcing $f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql) log "$0: running $f"; docker_process_sql -f "$f" ;;
            *.sql.gz) log "$0: running $f"; gunzip -c "$f" | docker_process_sql ;;
            *.sql.xz) log "$0: running $f"; xzcat "$f" | docker_process_sql ;;
            *.sql.zst) log "$0: running $f"; zstd -dc "$f" | docker_process_sql ;;
            *) log "$0: ignoring $f" ;;
        esac
    done
}

wants_server_setup() {
    local arg
    for arg; do
        case "$arg" in
            -'?'|--help|--describe-config|-V|--version) return 1 ;;
        esac
    done
    return 0
}

main() {
    if [ "${1:0:1}" = '-' ]; then
        set -- postgres "$@"
    fi
    if [ "$1" != postgres ] || ! wants_server_setup "$@"; then
        exec "$@"
    fi

    read_settings
    prepare_directories
    if [ "$(id -u)" = 0 ]; then
        exec gosu postgres "${BASH_SOURCE[0]}" "$@"
    fi

    if [ -z "$DATABASE_EXISTS" ]; then
        require_password
        run_initdb
        append_host_rule "${@:2}"
        # A `local ... scram-sha-256` rule (from POSTGRES_INITDB_ARGS) needs the password too.
        export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
        start_temp_server "${@:2}"
        create_database
        shopt -s nullglob
        run_init_scripts /docker-entrypoint-initdb.d/*
        shopt -u nullglob
        stop_temp_server
        unset PGPASSWORD
        log
        log 'PostgreSQL init process complete; ready for start up.'
        log
    else
        log
        log 'PostgreSQL Database directory appears to contain a database; Skipping initialization'
        log
    fi
    exec "$@"
}

main "$@"
