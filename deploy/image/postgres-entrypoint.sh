#!/bin/sh
# Entrypoint of sandboxd-postgres (deploy/image/postgres.py): the registry's postgres image's
# contract, so compose.yaml runs either. On an empty $PGDATA it creates the cluster with
# POSTGRES_USER as superuser (password POSTGRES_PASSWORD, scram-sha-256 over TCP from anywhere,
# trust over the local socket) and the database POSTGRES_DB (default: the user's name); then it
# runs postgres in the foreground as the postgres user, listening on all addresses.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "POSTGRES_PASSWORD must be set to initialise the database" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb -D "$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        # Single-user mode: no server (and no port open) before the database exists.
        printf 'CREATE DATABASE "%s";\n' "$POSTGRES_DB" \
            | as_postgres postgres --single -j -D "$PGDATA" postgres >/dev/null
    fi
    echo "initialised $PGDATA: user $POSTGRES_USER, database $POSTGRES_DB" >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
    postgres -D "$PGDATA" -c listen_addresses='*' "$@"
