#!/usr/bin/env bash
# Checks that gfs-sim and mapreduce-sim still simulate exactly what they did when the digests
# below were pinned: 1000 seeds from each of three far-apart ranges per simulator, each seed's
# digest (every delivery, disk completion, tick, boot and crash in order, and the final
# figures) summed per range. A speed-up must leave them all alone; a change of behaviour
# (a new fault, a fixed bug) changes them and is pinned again with the new values.
#
#   guest/gfs-sim/scripts/check-digests.sh [DIR]   per-seed digests are kept in DIR (default
#                                                  a temporary folder) to diff a mismatch
#   PROFILE=sweep guest/gfs-sim/scripts/check-digests.sh   checks the sweeps' build (LTO)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
profile=${PROFILE:-release}
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --profile "$profile" -q -p gfs-sim -p mapreduce-sim

pinned=(
    "gfs-sim 0..1000 cf0e6d8c50599c72"
    "gfs-sim 10000000000..10000001000 84927f5753000f00"
    "gfs-sim 7000000000000..7000000001000 76321e681a1833ac"
    "mapreduce-sim 0..1000 c31dbaf0124ad52b"
    "mapreduce-sim 10000000000..10000001000 85ced1b964d52ebd"
    "mapreduce-sim 7000000000000..7000000001000 aa3fb9510fe847da"
)
mismatches=0
for line in "${pinned[@]}"; do
    read -r sim range want <<<"$line"
    log="$out/$sim-$range.txt"
    target/"$profile"/"$sim" --seeds "$range" --digests >"$log" 2>/dev/null || true
    got=$(sed -n 's/.*combined digest of 1000 seeds .*: //p' "$log")
    if [ "$got" = "$want" ]; then
        echo "same     $sim $range $got"
    else
        echo "CHANGED  $sim $range: got ${got:-nothing}, pinned $want (per seed: $log)"
        mismatches=$((mismatches + 1))
    fi
done
echo "digests: $((${#pinned[@]} - mismatches)) of ${#pinned[@]} ranges (1000 seeds each) unchanged"
[ "$mismatches" -eq 0 ]
