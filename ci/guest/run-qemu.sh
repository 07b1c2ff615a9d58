#!/usr/bin/env bash
# Boots the test guest (built by ci/guest/build.sh) under QEMU 7.2 / TCG against a vhost-user-blk
# server listening on SOCKET, captures the serial console and exits 0 only if the guest printed
# "VMPATH-GUEST RESULT: PASS".
#
# Usage: ci/guest/run-qemu.sh [options] SOCKET [extra qemu args...]
#        ci/guest/run-qemu.sh [options] --nvmf PORT[:PORT...],SUBNQN,HOSTNQN [- [extra qemu args...]]
#   --mode basic|restart|stamp|check-stamp   guest test mode (default basic)
#   --restart-cmd CMD   restart mode: shell command run on the host once the guest has written its
#                       data and is doing I/O; it must kill the target and return once the new one
#                       listens on SOCKET again; the guest is then told "VMPATH-HOST: RESTARTED"
#   --queues N          vhost-user-blk num-queues (default 2)
#   --smp N             guest vCPUs (default: queues; each blk-mq queue needs a CPU)
#   --accel tcg|kvm     accelerator (default tcg: KVM is not dependable on the project's machines)
#   --timeout SECS      whole-run limit (default 300)
#   --log FILE          serial log (default: a new file in $VMPATH_GUEST_DIR/guest/logs, the 30
#                       newest kept)
#   --append ARGS       extra kernel command line (e.g. vmpath.discard=any)
#   --quiet             do not echo the serial console to stdout
#   --nvmf PORT[:PORT...],SUBNQN,HOSTNQN  the guest is a Linux NVMe/TCP host instead (or as
#                       well, with a SOCKET): QEMU user networking, the guest kernel's nvme_tcp
#                       connects to 127.0.0.1:PORT of this machine as HOSTNQN, once per port;
#                       test its namespace with --append "vmpath.disks=nvme0n1 ..."; SOCKET may
#                       then be "-" (none)
# Exit status: 0 PASS, 1 FAIL or timeout, 2 usage/setup error.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="${VMPATH_GUEST_DIR:-$REPO/ci/work}"

MODE=basic RESTART_CMD="" QUEUES=2 SMP="" ACCEL=tcg TIMEOUT=300 LOG="" APPEND="" QUIET=0 NVMF=
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE="$2" && shift 2 ;;
    --restart-cmd) RESTART_CMD="$2" && shift 2 ;;
    --queues) QUEUES="$2" && shift 2 ;;
    --smp) SMP="$2" && shift 2 ;;
    --accel) ACCEL="$2" && shift 2 ;;
    --timeout) TIMEOUT="$2" && shift 2 ;;
    --log) LOG="$2" && shift 2 ;;
    --append) APPEND="$2" && shift 2 ;;
    --quiet) QUIET=1 && shift ;;
    --nvmf) NVMF="$2" && shift 2 ;;
    -h | --help) usage ;;
    --*) echo "run-qemu: unknown option $1" >&2 && usage ;;
    *) break ;;
  esac
done
if [ -n "$NVMF" ] && { [ $# -eq 0 ] || [ "$1" = - ]; }; then
  SOCKET=""
  [ $# -eq 0 ] || shift
else
  [ $# -ge 1 ] || usage
  SOCKET="$1"
  shift
fi
case "$MODE" in basic | restart | stamp | check-stamp) ;; *) echo "run-qemu: bad --mode $MODE" >&2 && exit 2 ;; esac
if [ "$MODE" = restart ] && [ -z "$RESTART_CMD" ]; then
  echo "run-qemu: --mode restart needs --restart-cmd" >&2
  exit 2
fi
[ -z "$SOCKET" ] || [ -S "$SOCKET" ] || {
  echo "run-qemu: $SOCKET is not a listening Unix socket" >&2
  exit 2
}
SMP="${SMP:-$QUEUES}"
case "$ACCEL" in tcg) CPU=qemu64 ;; kvm) CPU=host ;; *) echo "run-qemu: bad --accel $ACCEL" >&2 && exit 2 ;; esac

ENVF="$W/guest/env.sh"
[ -f "$ENVF" ] || {
  echo "run-qemu: $ENVF missing: run ci/guest/build.sh first" >&2
  exit 2
}
# shellcheck source=/dev/null
. "$ENVF"

QPID=""
RUN=""
cleanup() {
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
    kill "$QPID" 2>/dev/null || true
    sleep 1
    kill -9 "$QPID" 2>/dev/null || true
  fi
  exec 3>&- || true
  [ -z "$RUN" ] || rm -rf "$RUN"
}
trap cleanup EXIT
trap "exit 1" INT TERM HUP
RUN="$(mktemp -d "${TMPDIR:-/tmp}/vmpath-guest.XXXXXX")"
if [ -z "$LOG" ]; then
  mkdir -p "$W/guest/logs"
  # keep the 30 newest logs
  { ls -1t "$W/guest/logs"/*.log 2>/dev/null || true; } | tail -n +30 | while read -r old; do rm -f "$old"; done
  LOG="$W/guest/logs/$(date +%Y%m%d-%H%M%S)-$MODE-$$.log"
fi
mkdir -p "$(dirname "$LOG")"
: >"$LOG"

FW_ARGS=()
for d in "${QEMU_FW[@]}"; do [ -d "$d" ] && FW_ARGS+=(-L "$d"); done

CMDLINE="console=ttyS0 quiet panic=-1 vmpath.mode=$MODE vmpath.min_queues=$QUEUES${NVMF:+ vmpath.nvmf=$NVMF}${APPEND:+ $APPEND}"
DEV_ARGS=()
if [ -n "$SOCKET" ]; then
  DEV_ARGS+=(-chardev "socket,id=c0,path=$SOCKET,reconnect=1"
    -device "vhost-user-blk-pci,chardev=c0,num-queues=$QUEUES")
fi
if [ -n "$NVMF" ]; then
  # User-mode networking: the guest's 10.0.2.2 is this machine's loopback.
  # shellcheck disable=SC2054 # commas belong to QEMU option values
  DEV_ARGS+=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)
fi
# shellcheck disable=SC2054 # commas belong to QEMU option values
QEMU_ARGS=(
  "${FW_ARGS[@]}"
  -machine q35 -accel "$ACCEL" -cpu "$CPU" -smp "$SMP" -m 512
  -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
  -nodefaults -no-user-config -display none -serial stdio
  "${DEV_ARGS[@]}"
  -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "$CMDLINE"
  -no-reboot
  "$@"
)

# Serial input comes from a FIFO so the host can talk to the guest (restart signal).
mkfifo "$RUN/in"
T0=$(date +%s.%N)
if [ "$QUIET" = 1 ]; then
  LD_LIBRARY_PATH="$QEMU_LD" "$QEMU_BIN" "${QEMU_ARGS[@]}" <"$RUN/in" >"$LOG" 2>"$RUN/qemu.err" &
else
  LD_LIBRARY_PATH="$QEMU_LD" "$QEMU_BIN" "${QEMU_ARGS[@]}" <"$RUN/in" > >(tee "$LOG") 2>"$RUN/qemu.err" &
fi
QPID=$!
exec 3>"$RUN/in"

# grep -c reads all its input: no SIGPIPE for tr under pipefail, unlike grep -q
has_line() { tr -d '\r' <"$LOG" | grep -c "$1" >/dev/null; }
elapsed() { echo "$(date +%s.%N) $T0" | awk '{ printf "%.1f", $1 - $2 }'; }

restart_done=0
status=""
while :; do
  if ! kill -0 "$QPID" 2>/dev/null; then
    break
  fi
  if [ "$(elapsed | cut -d. -f1)" -ge "$TIMEOUT" ]; then
    status="timeout after ${TIMEOUT}s"
    break
  fi
  if [ "$MODE" = restart ] && [ "$restart_done" = 0 ] && has_line '^VMPATH-GUEST: READY-FOR-RESTART'; then
    restart_done=1
    echo "run-qemu: guest ready at $(elapsed)s; running restart command: $RESTART_CMD" >&2
    rrc=0
    bash -c "$RESTART_CMD" </dev/null >&2 || rrc=$?
    if [ "$rrc" = 0 ]; then
      echo "run-qemu: restart command done at $(elapsed)s; signalling the guest" >&2
      echo "VMPATH-HOST: RESTARTED" >&3
    else
      status="restart command failed (exit $rrc)"
      break
    fi
  fi
  sleep 0.5
done
qrc=0
if [ -z "$status" ]; then
  wait "$QPID" || qrc=$?
  QPID=""
fi
sleep 0.2 # let tee drain
T=$(elapsed)
if [ -s "$RUN/qemu.err" ]; then
  echo "run-qemu: qemu stderr:" >&2
  sed 's/^/  /' "$RUN/qemu.err" >&2
fi
result=$(tr -d '\r' <"$LOG" | grep '^VMPATH-GUEST RESULT: ' | tail -n1 || true)
if [ -z "$status" ] && [[ "$result" == "VMPATH-GUEST RESULT: PASS"* ]]; then
  echo "run-qemu: PASS in ${T}s (mode $MODE, $QEMU_VERSION, kernel $GUEST_KVER, log $LOG)"
  exit 0
fi
echo "run-qemu: FAIL in ${T}s (mode $MODE): ${status:-${result:-no result line from the guest; qemu exit $qrc}} (log $LOG)"
tr -d '\r' <"$LOG" | grep -E '^VMPATH-GUEST' | grep -E 'FAIL|failed' | head -n 25 | sed 's/^/  /' || true
[ -n "$result" ] || tr -d '\r' <"$LOG" | tail -n 15 | sed 's/^/  | /' || true
exit 1
