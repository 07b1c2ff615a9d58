#!/usr/bin/env bash
# Validates the real-guest harness without vmpath: qemu-storage-daemon (the installed one, else the
# QEMU 7.2 one unpacked by build.sh) serves the vhost-user-blk export.
#   1. basic    file-backed export (discard=unmap), 2 queues            -> must PASS
#               (qemu-storage-daemon reports wce=0: run with vmpath.wce=enable)
#   2. restart  the daemon is SIGKILLed and restarted while the guest
#               keeps doing I/O on both queues                          -> must PASS
#               (the target stays down ~1 s; the guest's requests wait in QEMU)
#   3. stamp    writes + flushes stamp data; the daemon is stopped, a new one
#               started on the same image, and check-stamp reads it    -> must PASS
#   4. negative null-co export that drops every write                   -> must FAIL (the guest
#               detects the lost data), proving the harness can fail
# Prints one line per case and "N passed, N failed"; exit 0 only if all cases behaved.
# Usage: ci/guest/selftest-qsd.sh [--quiet]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="${VMPATH_GUEST_DIR:-$REPO/ci/work}"

# Internal: restart helper called by run-qemu.sh in restart mode.
if [ "${1:-}" = "--restart" ]; then
  D="$2"
  kill -9 "$(cat "$D/qsd.pid")"
  while kill -0 "$(cat "$D/qsd.pid")" 2>/dev/null; do sleep 0.1; done
  sleep 1 # the target stays down for a while; the guest's requests wait in QEMU
  # shellcheck source=/dev/null
  . "$D/qsd.cmd"
  rm -f "$SOCK"
  LD_LIBRARY_PATH="$QSD_LD" "$QSD" "${QSD_ARGS[@]}" >>"$D/qsd.log" 2>&1 &
  echo $! >"$D/qsd.pid"
  for _ in $(seq 100); do
    [ -S "$SOCK" ] && exit 0
    sleep 0.1
  done
  echo "selftest: restarted qemu-storage-daemon did not listen on $SOCK" >&2
  exit 1
fi

QUIET=()
[ "${1:-}" = "--quiet" ] && QUIET=(--quiet)

"$HERE/build.sh" --quiet >/dev/null
# shellcheck source=/dev/null
. "$W/guest/env.sh"
if command -v qemu-storage-daemon >/dev/null; then
  QSD=$(command -v qemu-storage-daemon)
  QSD_LD=""
else
  QSD="$QSD_BIN_UNPACKED"
  QSD_LD="$QEMU_LD"
fi
echo "selftest: $("$QSD" --version 2>/dev/null | head -n1 || LD_LIBRARY_PATH="$QSD_LD" "$QSD" --version | head -n1)"

D="$(mktemp -d "${TMPDIR:-/tmp}/vmpath-guest-selftest.XXXXXX")"
cleanup() {
  if [ -f "$D/qsd.pid" ]; then kill "$(cat "$D/qsd.pid")" 2>/dev/null || true; fi
  rm -rf "$D"
}
trap cleanup EXIT

# start_qsd BLOCKDEV: starts the daemon exporting node n0 on $D/vu.sock.
start_qsd() {
  SOCK="$D/vu.sock"
  QSD_ARGS=(--blockdev "$1"
    --export "type=vhost-user-blk,id=e0,node-name=n0,addr.type=unix,addr.path=$SOCK,num-queues=2,writable=on")
  {
    declare -p SOCK QSD QSD_LD QSD_ARGS
  } >"$D/qsd.cmd"
  rm -f "$SOCK"
  LD_LIBRARY_PATH="$QSD_LD" "$QSD" "${QSD_ARGS[@]}" >"$D/qsd.log" 2>&1 &
  echo $! >"$D/qsd.pid"
  disown # the restart helper SIGKILLs it: no job-control noise
  for _ in $(seq 100); do
    [ -S "$SOCK" ] && return 0
    sleep 0.1
  done
  echo "selftest: qemu-storage-daemon did not start:" >&2
  cat "$D/qsd.log" >&2
  return 1
}
stop_qsd() {
  kill "$(cat "$D/qsd.pid")" 2>/dev/null || true
  while kill -0 "$(cat "$D/qsd.pid")" 2>/dev/null; do sleep 0.1; done
  rm -f "$D/qsd.pid"
}

passed=0 failed=0
report() { # NAME EXPECTED(0|1) RC SECONDS
  if { [ "$2" = 0 ] && [ "$3" = 0 ]; } || { [ "$2" = 1 ] && [ "$3" = 1 ]; }; then
    echo "selftest: $1: ok (run-qemu exit $3 as expected, ${4}s)"
    passed=$((passed + 1))
  else
    echo "selftest: $1: FAILED (run-qemu exit $3, expected $2, ${4}s)"
    failed=$((failed + 1))
  fi
}
timed() { # runs "$@", sets RC and SECS
  local t0
  t0=$(date +%s.%N)
  RC=0
  "$@" || RC=$?
  SECS=$(echo "$(date +%s.%N) $t0" | awk '{ printf "%.1f", $1 - $2 }')
}

truncate -s 256M "$D/disk.img"
start_qsd "driver=file,node-name=n0,filename=$D/disk.img,discard=unmap"
timed "$HERE/run-qemu.sh" "${QUIET[@]}" --append vmpath.wce=enable "$D/vu.sock"
report basic 0 "$RC" "$SECS"
timed "$HERE/run-qemu.sh" "${QUIET[@]}" --append vmpath.wce=enable --mode restart \
  --restart-cmd "bash '$HERE/selftest-qsd.sh' --restart '$D'" "$D/vu.sock"
report restart 0 "$RC" "$SECS"
timed "$HERE/run-qemu.sh" "${QUIET[@]}" --append vmpath.wce=enable --mode stamp "$D/vu.sock"
report stamp 0 "$RC" "$SECS"
stop_qsd
# A new daemon on the same image: the data flushed by the previous boot must be there.
start_qsd "driver=file,node-name=n0,filename=$D/disk.img,discard=unmap"
timed "$HERE/run-qemu.sh" "${QUIET[@]}" --mode check-stamp "$D/vu.sock"
report "check-stamp (new daemon)" 0 "$RC" "$SECS"
stop_qsd

start_qsd "driver=null-co,node-name=n0,size=268435456,read-zeroes=on"
timed "$HERE/run-qemu.sh" --quiet --append vmpath.wce=enable "$D/vu.sock"
report "negative (writes dropped)" 1 "$RC" "$SECS"
stop_qsd

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
