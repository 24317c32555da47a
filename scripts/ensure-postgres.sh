#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 for the store's tests:
# installs Debian's postgresql when missing, starts the cluster when stopped, and gives
# the postgres role the password the tests use (postgres) when it had to set things up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }
ready && exit 0
"$here/ensure-apt.sh" pg_ctlcluster:postgresql
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
$sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
  || $sudo pg_ctlcluster "$version" main start
for _ in $(seq 1 30); do ready && break; sleep 1; done
ready || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
as_postgres psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
