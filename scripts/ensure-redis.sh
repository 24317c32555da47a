#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379 for the supervision tests (live
# events and take-over across processes): installs Debian's redis-server when missing and
# starts one (no persistence: the tests keep nothing) when none answers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ready() {
  command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
}
ready && exit 0
"$here/ensure-apt.sh" redis-server:redis-server redis-cli:redis-tools
redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --daemonize yes >/dev/null
for _ in $(seq 1 30); do ready && break; sleep 1; done
ready || { echo "Redis did not start on 127.0.0.1:6379" >&2; exit 1; }
