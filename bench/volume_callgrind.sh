#!/usr/bin/env bash
# Instructions per request through the per-VM data path (volume channel + scheduler shard +
# path dispatch + completion accounting + null device), at 1, 100 and 1000 VMs on one reactor:
# two callgrind runs with different request counts; the difference cancels set-up costs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmpath-bench --bin volume_bench
N1=${N1:-100000}
N2=${N2:-200000}
for vms in ${VMS:-1 100 1000}; do
  ir() {
    valgrind --tool=callgrind --callgrind-out-file="/tmp/volume_cg.$vms.$1.out" \
      target/release/volume_bench --vms "$vms" --reactors 1 --iters "$1" --no-pin 2>&1 |
      awk '/Collected/ {print $4}'
  }
  a=$(ir "$N1"); b=$(ir "$N2")
  echo "$vms VMs: $(( (b - a) / (N2 - N1) )) instructions per request (Ir $a at $N1, $b at $N2)"
done
