#!/usr/bin/env bash
# Instructions per I/O of the block layer's null path, counted by valgrind's callgrind.
#
# Runs `bdev_bench --iters N` twice (N1 and N2 I/Os, same settings) and prints
#   (Ir(N2) - Ir(N1)) / (N2 - N1)
# i.e. the instructions one more I/O costs -- submit plus completion, including the load
# generator's own bookkeeping (offset choice, latency recording) and the reactor loop
# amortised over a batch -- with start-up and tear-down cancelled out.
#
# Usage: bench/callgrind.sh            (defaults below; override with environment variables)
#   BACKEND=null QD=32 RW=randread N1=100000 N2=200000 GOAL=300 bench/callgrind.sh
# Exits 1 if the figure is above GOAL (set GOAL=0 to only report).
set -euo pipefail

BACKEND=${BACKEND:-null}
QD=${QD:-32}
RW=${RW:-randread}
N1=${N1:-100000}
N2=${N2:-200000}
GOAL=${GOAL:-300}
OUT=${OUT:-/tmp}

cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
cargo build --release --quiet -p vmpath-bench --bin bdev_bench
TARGET_DIR=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
BIN="$TARGET_DIR/release/bdev_bench"

count() {
    local n=$1 out="$OUT/cg.$BACKEND.qd$QD.$1.out"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN" --backend "$BACKEND" --qd "$QD" --rw "$RW" --iters "$n" >/dev/null 2>"$out.log" \
        || { echo "valgrind run failed, see $out.log" >&2; exit 2; }
    sed -n 's/^summary: *//p' "$out"
}

IR1=$(count "$N1")
IR2=$(count "$N2")
PER_IO=$(awk -v a="$IR1" -v b="$IR2" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')
echo "backend=$BACKEND rw=$RW qd=$QD"
echo "Ir($N1 I/Os) = $IR1"
echo "Ir($N2 I/Os) = $IR2"
echo "instructions per I/O (submit + completion): $PER_IO"
echo "profile: callgrind_annotate $OUT/cg.$BACKEND.qd$QD.$N2.out"
if [ "$GOAL" != 0 ] && awk -v p="$PER_IO" -v g="$GOAL" 'BEGIN { exit !(p > g) }'; then
    echo "above the goal of $GOAL instructions per I/O" >&2
    exit 1
fi
