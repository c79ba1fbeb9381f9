#!/usr/bin/env bash
# Counts false failovers of an FT pair under load: a stress guest on the primary and two host
# CPU hogs saturate this machine for SECONDS (default 600), with the failure timeout
# TIMEOUT_MS (default: ftvm's own; the heartbeat interval follows it, a tenth of it).
# Any role change (-> live, -> solo) is a false failover: nothing failed.
#   bash tests/scripts/false_failovers.sh target/release/ftvm [SECONDS [TIMEOUT_MS]]
set -u
ftvm=${1:?usage: false_failovers.sh FTVM [SECONDS [TIMEOUT_MS]]}
seconds=${2:-600}
timeout=()
if [ -n "${3:-}" ]; then timeout=(--failure-timeout-ms "$3"); fi
dir=$(mktemp -d /tmp/ftvm-false-failovers.XXXXXX)
"$ftvm" pair init "$dir" >/dev/null
yes >/dev/null & hog1=$!
yes >/dev/null & hog2=$!
trap 'kill $hog1 $hog2 2>/dev/null; rm -rf "$dir"' EXIT
"$ftvm" backup --listen 127.0.0.1:29777 --arbiter "$dir" "${timeout[@]}" >"$dir/backup.out" 2>"$dir/backup.err" &
backup=$!
"$ftvm" primary --stats --backup 127.0.0.1:29777 --arbiter "$dir" "${timeout[@]}" \
    --cmdline "role=stress seed=11 ms=$((seconds * 1000))" >"$dir/primary.out" 2>"$dir/primary.err"
echo "primary exit $?"
wait $backup
echo "backup exit $?"
changes=$(cat "$dir/primary.err" "$dir/backup.err" | grep -c -- '-> \(live\|solo\)')
echo "false failovers in $seconds s under load (failure timeout ${3:-default} ms): $changes"
grep -o "lag entries.*(median/p99)" "$dir/primary.err"
