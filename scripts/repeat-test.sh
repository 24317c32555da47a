#!/usr/bin/env bash
# Runs one test (or a -k selection) N times in a row, each in a fresh pytest process (a new
# server, new models), and stops at the first failure: how a flaky test is shown fixed.
#   scripts/repeat-test.sh 20 tests/test_e2e_voice.py -k short_burst
set -euo pipefail
runs=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
for i in $(seq 1 "$runs"); do
  if ! "$here/.venv/bin/python" -m pytest -q -p no:cacheprovider "$@" >"/tmp/repeat-test.$i.log" 2>&1; then
    echo "run $i of $runs FAILED (log: /tmp/repeat-test.$i.log)"
    tail -20 "/tmp/repeat-test.$i.log"
    exit 1
  fi
  echo "run $i of $runs: $(tail -1 "/tmp/repeat-test.$i.log")"
done
echo "$runs runs in a row passed"
