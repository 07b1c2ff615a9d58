#!/bin/sh
# vmpath guest-side block test (runs inside the busybox initramfs, started by /init).
#
# Every written block holds one 512-byte record per sector naming the seed and the sector's LBA,
# so a lost, stale, torn or misplaced write is caught at sector granularity. All data I/O uses
# O_DIRECT (busybox dd oflag=direct / iflag=direct), so it reaches the virtio-blk device.
#
# Modes (VMPATH_MODE, set by /init from vmpath.mode=):
#   basic        queues, multi-queue O_DIRECT write/read/verify, flush, discard, write-zeroes
#   restart      data written, then I/O kept running on every CPU while the host restarts the
#                target (host signals "VMPATH-HOST: RESTARTED" on the serial line); afterwards
#                the pre-restart data and the last loop data are verified
#   stamp        writes the stamp blocks and flushes (first boot of a two-boot persistence test)
#   check-stamp  verifies the stamp blocks (second boot)
# Output: "VMPATH-GUEST: CHECK <name>: ok|FAIL - detail" lines; exit status 0 only if all passed.
#
# Disk layout (bytes): [0,4M) flush test, [4M,8M) discard test, [8M,12M) restart-mode stream,
# [12M,16M) write-zeroes test, [16M,end) NSLOTS data slots of 4 KiB .. 1 MiB + 512 at spread
# offsets, the last slot ending at the last sector of the disk.
# shellcheck disable=SC2046 # "set -- $(slot ...)" splits "OFFSET LEN" on purpose
# shellcheck disable=SC3045 # busybox ash has read -t
set -u
T=/tmp/vmpath
mkdir -p "$T"
FAILS="$T/fails"
NSLOTS=48
MIB=1048576

say() { echo "VMPATH-GUEST: $*"; }
pass() { say "CHECK $1: ok${2:+ - $2}"; }
fail() {
  # Print the first 20 failures in full; count all of them.
  [ "$(wc -l <"$FAILS")" -lt 20 ] && say "CHECK $1: FAIL - $2"
  echo "$1" >>"$FAILS"
}
ncpus() { grep -c '^processor' /proc/cpuinfo; }
now() { cut -d' ' -f1 /proc/uptime; }

# pattern SEED OFFSET LEN: LEN bytes, one 512-byte record per sector naming SEED and the LBA.
pattern() {
  awk -v s="$1" -v l="$(($2 / 512))" -v n="$(($3 / 512))" \
    'BEGIN { for (i = 0; i < n; i++) printf "%-511.511s\n", "vmpath seed=" s " lba=" (l + i) " " }'
}

# write_block DEV OFFSET LEN SEED
write_block() {
  pattern "$4" "$2" "$3" >"$T/w.$$"
  if ! dd if="$T/w.$$" of="/dev/$1" bs="$3" count=1 seek="$2" oflag=seek_bytes,direct conv=notrunc 2>"$T/err.$$"; then
    echo "O_DIRECT write of $3 bytes at $2 on $1 failed: $(tail -n1 "$T/err.$$")"
    return 1
  fi
}

# read_block DEV OFFSET LEN FILE: O_DIRECT read into FILE.
read_block() {
  local got
  if ! dd if="/dev/$1" of="$4" bs="$3" count=1 skip="$2" iflag=skip_bytes,direct 2>"$T/err.$$"; then
    echo "O_DIRECT read of $3 bytes at $2 on $1 failed: $(tail -n1 "$T/err.$$")"
    return 1
  fi
  got=$(wc -c <"$4")
  if [ "$got" -ne "$3" ]; then
    echo "short O_DIRECT read at $2 on $1: $got of $3 bytes"
    return 1
  fi
}

# explain_mismatch DEV OFFSET EXPECTED ACTUAL: names the first differing sector and its content.
explain_mismatch() {
  local pos sec found
  pos=$(cmp "$3" "$4" 2>/dev/null | sed -n 's/.* char \([0-9]*\).*/\1/p')
  [ -n "$pos" ] || pos=1
  sec=$(((pos - 1) / 512))
  if [ "$(dd if="$4" bs=512 skip="$sec" count=1 2>/dev/null | tr -d '\000' | wc -c)" -eq 0 ]; then
    found="a sector of zeroes"
  else
    found="'$(dd if="$4" bs=512 skip="$sec" count=1 2>/dev/null | head -c 48 | tr -c '[:print:]' '.')'"
  fi
  echo "data mismatch on $1 at LBA $(($2 / 512 + sec)) (byte $(($2 + pos - 1))): found $found"
}

# check_block DEV OFFSET LEN SEED: reads back and compares with the pattern.
check_block() {
  pattern "$4" "$2" "$3" >"$T/e.$$"
  read_block "$1" "$2" "$3" "$T/r.$$" || return 1
  if ! cmp -s "$T/e.$$" "$T/r.$$"; then
    explain_mismatch "$1" "$2" "$T/e.$$" "$T/r.$$"
    return 1
  fi
}

# check_zero DEV OFFSET LEN
check_zero() {
  read_block "$1" "$2" "$3" "$T/r.$$" || return 1
  head -c "$3" /dev/zero >"$T/e.$$"
  if ! cmp -s "$T/e.$$" "$T/r.$$"; then
    explain_mismatch "$1" "$2" "$T/e.$$" "$T/r.$$"
    return 1
  fi
}

disk_bytes() { echo $(($(cat "/sys/block/$1/size") * 512)); }
lbs() { cat "/sys/block/$1/queue/logical_block_size"; }

# slot DEV I: prints "OFFSET LEN" of data slot I.
slot() {
  local size bs len off
  size=$(disk_bytes "$1")
  bs=$(lbs "$1")
  case $(($2 % 5)) in
    0) len=4096 ;;
    1) len=4608 ;;
    2) len=65536 ;;
    3) len=$((128 * 1024 + 512)) ;;
    *) len=$MIB ;;
  esac
  len=$(((len + bs - 1) / bs * bs))
  if [ "$2" -eq $((NSLOTS - 1)) ]; then
    off=$((size - len))
  else
    off=$((16 * MIB + (size - 18 * MIB) / NSLOTS * $2))
    off=$((off / 4096 * 4096 + ($2 * 3 % 8) * 512))
    off=$((off / bs * bs))
  fi
  echo "$off $len"
}

# mpath_paths DEV: the path disks of an NVMe multipath head node nvmeXnY (nvmeXcZnY), if any.
mpath_paths() {
  local p
  case "$1" in nvme*n*) ;; *) return 0 ;; esac
  for p in /sys/block/"${1%n*}"c*n"${1##*n}"; do [ -e "$p/stat" ] && echo "$p"; done
}

# stat_field DEV N: field N (1-based) of /sys/block/DEV/stat. For an NVMe multipath head node
# (bio-based: flushes and discards are counted where they are issued), the sum over its paths.
stat_field() {
  local paths p
  paths=$(mpath_paths "$1")
  [ -n "$paths" ] || paths="/sys/block/$1"
  for p in $paths; do cat "$p/stat"; done | awk -v n="$2" '
    NF < n { bad = 1 } { sum += $n } END { print bad ? -1 : sum + 0 }'
}

# irq_counts DEV: "q0=N q1=M ..." from the per-queue MSI-X vectors "virtioX-req.Q".
irq_counts() {
  local vdev
  vdev=$(basename "$(readlink "/sys/block/$1/device")")
  awk -v p="$vdev-req." 'index($0, p) {
      n = 0
      for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i
      q = substr($NF, length(p) + 1)
      printf "q%s=%d ", q, n
    }' /proc/interrupts
}

# worker DEV CPU NCPU SEED STEP FIRST: writes+verifies slots FIRST, FIRST+STEP, ... owned by CPU.
worker() {
  local dev=$1 cpu=$2 n=$3 seed=$4 step=$5 i=$6 k=0 msg
  while [ "$i" -lt "$NSLOTS" ]; do
    if [ $((k % n)) -eq "$cpu" ]; then
      set -- $(slot "$dev" "$i")
      msg=$(write_block "$dev" "$1" "$2" "$seed" && check_block "$dev" "$1" "$2" "$seed") ||
        fail "$dev:write-verify" "cpu$cpu slot $i: $msg"
    fi
    i=$((i + step))
    k=$((k + 1))
  done
  rm -f "$T"/*.$$
}

# loop_worker DEV CPU NCPU: restart mode; rewrites+verifies its odd slots until $T/stop exists.
loop_worker() {
  local dev=$1 cpu=$2 n=$3 it=0 i k msg
  while [ ! -e "$T/stop" ]; do
    it=$((it + 1))
    i=1 k=0
    while [ "$i" -lt "$NSLOTS" ]; do
      if [ $((k % n)) -eq "$cpu" ]; then
        set -- $(slot "$dev" "$i")
        if ! msg=$(write_block "$dev" "$1" "$2" "loop$it" && check_block "$dev" "$1" "$2" "loop$it"); then
          fail "io-across-restart" "$dev cpu$cpu iteration $it slot $i: $msg"
          echo "$it" >"$T/dead.$dev.$cpu"
          return 1
        fi
      fi
      i=$((i + 2))
      k=$((k + 1))
    done
    echo "$it" >"$T/iter.$dev.$cpu"
  done
  rm -f "$T"/*.$$
}

# verify_slots DEV SEED FIRST STEP CHECKNAME
verify_slots() {
  local bad=0 i=$3 msg
  while [ "$i" -lt "$NSLOTS" ]; do
    set -- $(slot "$1" "$i") "$1" "$2" "$3" "$4" "$5"
    if ! msg=$(check_block "$3" "$1" "$2" "$4"); then
      fail "$7" "slot $i: $msg"
      bad=1
    fi
    shift 2
    i=$((i + $4))
  done
  return $bad
}

fsync_dev() {
  if ! sync "/dev/$1" 2>"$T/err.$$"; then
    echo "fsync(/dev/$1) failed: $(cat "$T/err.$$")"
    return 1
  fi
}

check_disk_basics() {
  local d=$1 size nq
  size=$(disk_bytes "$d")
  if [ "$size" -lt $((128 * MIB)) ]; then
    fail "$d:size" "disk is $size bytes; the test needs >= 128 MiB"
    return 1
  fi
  pass "$d:size" "$((size / MIB)) MiB, logical block $(lbs "$d") B, max I/O $(cat "/sys/block/$d/queue/max_hw_sectors_kb") KiB, $(cat "/sys/block/$d/queue/max_segments") segments"
  # Negotiated virtio feature bits (bit 0 first), for diagnosis of backend feature offers.
  say "$d: virtio features $(cat "/sys/block/$d/device/features" 2>/dev/null), cache $(cat "/sys/block/$d/cache_type" 2>/dev/null)"
  nq=$(ls "/sys/block/$d/mq" | wc -l)
  if [ "$nq" -ge "$VMPATH_MIN_QUEUES" ]; then
    pass "$d:queues" "$nq blk-mq hardware queues"
  else
    fail "$d:queues" "$nq hardware queue(s), want >= $VMPATH_MIN_QUEUES (guest has $(ncpus) cpus; QEMU num-queues?)"
  fi
}

check_multiqueue_io() {
  local d=$1 seed=$2 n irq0 irq1 t0 t1 c idle q p name a b
  n=$(ncpus)
  irq0=$(irq_counts "$d")
  t0=$(now)
  c=0
  while [ "$c" -lt "$n" ]; do
    taskset -c "$c" /vmpath/guest-test.sh worker "$d" "$c" "$n" "$seed" 1 0 &
    c=$((c + 1))
  done
  wait
  t1=$(now)
  irq1=$(irq_counts "$d")
  # Cross-check from one CPU: every slot holds what its writer wrote.
  verify_slots "$d" "$seed" 0 1 "$d:write-verify"
  if ! grep -qx "$d:write-verify" "$FAILS"; then
    pass "$d:write-verify" "$NSLOTS slots (4 KiB .. 1 MiB + 512 B, up to the last sector) written from $n cpus in parallel with O_DIRECT, read back and compared, ${t0}s->${t1}s uptime"
  fi
  # Every queue must have completed requests (per-queue MSI-X vector counts grew).
  if [ -z "$irq1" ]; then
    say "note: no per-queue MSI-X vectors for $d in /proc/interrupts; queue usage not checked"
    return 0
  fi
  idle=""
  for q in $irq1; do
    name=${q%%=*}
    a=${q#*=}
    b=0
    for p in $irq0; do [ "${p%%=*}" = "$name" ] && b=${p#*=}; done
    [ "$a" -gt "$b" ] || idle="$idle $name"
  done
  if [ -z "$idle" ]; then
    pass "$d:all-queues-used" "per-queue interrupts before: $irq0 after: $irq1"
  else
    fail "$d:all-queues-used" "no completions on queue(s)$idle (before: $irq0 after: $irq1)"
  fi
}

check_flush() {
  local d=$1 wc_mode f0 f1 f2 msg=""
  local how="device reports a write-back cache"
  wc_mode=$(cat "/sys/block/$d/queue/write_cache")
  if [ "$wc_mode" != "write back" ] && [ "$VMPATH_WCE" = enable ] &&
    echo "write back" >"/sys/block/$d/cache_type" 2>/dev/null; then
    # VIRTIO_BLK_F_CONFIG_WCE: the guest may turn the write cache on (a config-space write).
    wc_mode=$(cat "/sys/block/$d/queue/write_cache")
    how="device reported write through; switched to write back via cache_type (vmpath.wce=enable)"
  fi
  if [ "$wc_mode" != "write back" ]; then
    fail "$d:flush" "device reports '$wc_mode' (virtio features $(cat "/sys/block/$d/device/features")): without FLUSH + a write-back cache (CONFIG_WCE wce=1) guests never send flushes"
    return
  fi
  f0=$(stat_field "$d" 16)
  if [ "$f0" -lt 0 ]; then
    fail "$d:flush" "/sys/block/$d/stat has no flush counter"
    return
  fi
  if ! msg=$(write_block "$d" 0 $MIB flush && fsync_dev "$d" && check_block "$d" 0 $MIB flush); then
    fail "$d:flush" "$msg"
    return
  fi
  f1=$(stat_field "$d" 16)
  # dd conv=fsync path too
  pattern flush2 $MIB 65536 >"$T/w.$$"
  if ! dd if="$T/w.$$" of="/dev/$d" bs=65536 count=1 seek=$MIB oflag=seek_bytes conv=notrunc,fsync 2>"$T/err.$$"; then
    fail "$d:flush" "buffered write + fsync failed: $(tail -n1 "$T/err.$$")"
    return
  fi
  f2=$(stat_field "$d" 16)
  if [ "$f1" -gt "$f0" ] && [ "$f2" -gt "$f1" ] && msg=$(check_block "$d" $MIB 65536 flush2); then
    pass "$d:flush" "$how; flush requests completed: $f0 -> $f1 (O_DIRECT write + fsync) -> $f2 (buffered write + fsync), data verified"
  else
    fail "$d:flush" "flush counter $f0 -> $f1 -> $f2 ${msg:-}"
  fi
}

check_discard() {
  local d=$1 dmax gran base j msg n0 n1
  if [ "$VMPATH_DISCARD" = off ]; then
    say "CHECK $d:discard: skipped (vmpath.discard=off)"
    return
  fi
  dmax=$(cat "/sys/block/$d/queue/discard_max_bytes")
  gran=$(cat "/sys/block/$d/queue/discard_granularity")
  if [ "$dmax" -eq 0 ]; then
    fail "$d:discard" "discard_max_bytes is 0: VIRTIO_BLK_F_DISCARD not offered"
    return
  fi
  if [ "$gran" -gt $MIB ]; then
    fail "$d:discard" "discard granularity $gran > 1 MiB; the test region is 1 MiB aligned"
    return
  fi
  base=$((4 * MIB))
  j=0
  while [ $j -lt 4 ]; do
    if ! msg=$(write_block "$d" $((base + j * MIB)) $MIB "disc$j"); then
      fail "$d:discard" "$msg"
      return
    fi
    j=$((j + 1))
  done
  if ! msg=$(fsync_dev "$d"); then
    fail "$d:discard" "$msg"
    return
  fi
  n0=$(stat_field "$d" 12)
  if ! blkdiscard -o $((base + MIB)) -l $((2 * MIB)) "/dev/$d" 2>"$T/err.$$"; then
    fail "$d:discard" "blkdiscard failed: $(cat "$T/err.$$")"
    return
  fi
  n1=$(stat_field "$d" 12)
  if [ "$n1" -le "$n0" ]; then
    fail "$d:discard" "no discard request completed (counter $n0 -> $n1)"
    return
  fi
  # Data around the discarded range is untouched.
  for j in 0 3; do
    if ! msg=$(check_block "$d" $((base + j * MIB)) $MIB "disc$j"); then
      fail "$d:discard" "discard damaged data outside its range: $msg"
      return
    fi
  done
  if [ "$VMPATH_DISCARD" = zero ]; then
    for j in 1 2; do
      if ! msg=$(check_zero "$d" $((base + j * MIB)) $MIB); then
        fail "$d:discard" "discarded range does not read back as zeroes: $msg"
        return
      fi
    done
    pass "$d:discard" "2 MiB discarded ($((n1 - n0)) request(s), max $dmax B, granularity $gran B), reads back zeroes, neighbours intact"
  else
    for j in 1 2; do
      if ! read_block "$d" $((base + j * MIB)) $MIB "$T/r.$$" >"$T/err2.$$"; then
        fail "$d:discard" "reading the discarded range failed: $(cat "$T/err2.$$")"
        return
      fi
    done
    pass "$d:discard" "2 MiB discarded ($((n1 - n0)) request(s)); neighbours intact; content not checked (vmpath.discard=any)"
  fi
}

check_write_zeroes() {
  local d=$1 wz base j msg
  if [ "$VMPATH_WRITE_ZEROES" = off ]; then
    say "CHECK $d:write-zeroes: skipped (vmpath.write_zeroes=off)"
    return
  fi
  if [ ! -x /bin/blkzero ]; then
    say "CHECK $d:write-zeroes: skipped (initramfs built without rustc: no BLKZEROOUT tool)"
    return
  fi
  wz=$(cat "/sys/block/$d/queue/write_zeroes_max_bytes")
  if [ "$wz" -eq 0 ]; then
    fail "$d:write-zeroes" "write_zeroes_max_bytes is 0: VIRTIO_BLK_F_WRITE_ZEROES not offered (the kernel would write zero pages instead)"
    return
  fi
  base=$((12 * MIB))
  j=0
  while [ $j -lt 4 ]; do
    if ! msg=$(write_block "$d" $((base + j * MIB)) $MIB "wz$j"); then
      fail "$d:write-zeroes" "$msg"
      return
    fi
    j=$((j + 1))
  done
  # 2 MiB - 512 B starting one sector into the second MiB: unaligned to anything but a sector.
  if ! blkzero "/dev/$d" $((base + MIB + 512)) $((2 * MIB - 512)) 2>"$T/err.$$"; then
    fail "$d:write-zeroes" "$(cat "$T/err.$$")"
    return
  fi
  for j in 0 3; do
    if ! msg=$(check_block "$d" $((base + j * MIB)) $MIB "wz$j"); then
      fail "$d:write-zeroes" "write-zeroes damaged data outside its range: $msg"
      return
    fi
  done
  if ! msg=$(check_block "$d" $((base + MIB)) 512 "wz1"); then
    fail "$d:write-zeroes" "write-zeroes damaged the sector before its range: $msg"
    return
  fi
  if ! msg=$(check_zero "$d" $((base + MIB + 512)) $((2 * MIB - 512))); then
    fail "$d:write-zeroes" "zeroed range does not read back as zeroes: $msg"
    return
  fi
  pass "$d:write-zeroes" "BLKZEROOUT of 2 MiB - 512 B (write_zeroes_max_bytes $wz) reads back zeroes, neighbours intact"
}

mode_basic() {
  for d in $VMPATH_DISKS; do
    check_disk_basics "$d" || continue
    check_multiqueue_io "$d" "basic-$d"
    check_flush "$d"
    check_discard "$d"
    check_write_zeroes "$d"
  done
}

mode_stamp() {
  for d in $VMPATH_DISKS; do
    check_disk_basics "$d" || continue
    n=$(ncpus)
    c=0
    while [ "$c" -lt "$n" ]; do
      taskset -c "$c" /vmpath/guest-test.sh worker "$d" "$c" "$n" "stamp" 2 0 &
      c=$((c + 1))
    done
    wait
    if msg=$(fsync_dev "$d"); then
      pass "$d:stamp" "$((NSLOTS / 2)) stamp slots written, verified and flushed"
    else
      fail "$d:stamp" "$msg"
    fi
  done
}

mode_check_stamp() {
  for d in $VMPATH_DISKS; do
    check_disk_basics "$d" || continue
    verify_slots "$d" stamp 0 2 "$d:check-stamp" &&
      pass "$d:check-stamp" "$((NSLOTS / 2)) stamp slots written by the previous boot read back intact"
  done
}

# Restart mode: worker ids are "DEV.CPU" (slot loops, one per CPU) and "DEV.s" (a streaming
# writer: 4 MiB of sequential 64 KiB O_DIRECT writes + read-back, nearly always in flight).
STREAM_OFF=$((8 * MIB))
STREAM_LEN=$((4 * MIB))

# stream_worker DEV: rewrites+verifies the stream region with seeds streamA/streamB until stop.
stream_worker() {
  local dev=$1 it=0 s
  pattern streamA $STREAM_OFF $STREAM_LEN >"$T/streamA.$dev"
  pattern streamB $STREAM_OFF $STREAM_LEN >"$T/streamB.$dev"
  while [ ! -e "$T/stop" ]; do
    it=$((it + 1))
    s=A
    [ $((it % 2)) -eq 0 ] && s=B
    if ! dd if="$T/stream$s.$dev" of="/dev/$dev" bs=65536 seek=$STREAM_OFF oflag=seek_bytes,direct conv=notrunc 2>"$T/err.$$" ||
      ! dd if="/dev/$dev" of="$T/sr.$dev" bs=65536 count=$((STREAM_LEN / 65536)) skip=$STREAM_OFF iflag=skip_bytes,direct 2>"$T/err.$$"; then
      fail "io-across-restart" "$dev stream iteration $it: O_DIRECT I/O failed: $(tail -n1 "$T/err.$$")"
      echo "$it" >"$T/dead.$dev.s"
      return 1
    fi
    if ! cmp -s "$T/stream$s.$dev" "$T/sr.$dev"; then
      fail "io-across-restart" "$dev stream iteration $it: $(explain_mismatch "$dev" $STREAM_OFF "$T/stream$s.$dev" "$T/sr.$dev")"
      echo "$it" >"$T/dead.$dev.s"
      return 1
    fi
    echo "$it" >"$T/iter.$dev.s"
  done
  rm -f "$T"/*.$$
}

iters() { cat "$T/iter.$1" 2>/dev/null || echo 0; }
any_dead() { ls "$T"/dead.* >/dev/null 2>&1; }
# all_past MIN: 0 if every worker did MIN iterations since its mark, 2 if one died, else 1.
all_past() {
  local id base
  for id in $WIDS; do
    any_dead && return 2
    base=0
    [ -f "$T/mark.$id" ] && base=$(cat "$T/mark.$id")
    [ "$(iters "$id")" -ge $((base + $1)) ] || return 1
  done
  return 0
}
# wait_past MIN SECS
wait_past() {
  local w=0
  while [ "$w" -lt $(($2 * 10)) ]; do
    all_past "$1"
    case $? in 0) return 0 ;; 2) return 1 ;; esac
    sleep 0.1
    w=$((w + 1))
  done
  return 1
}
progress() {
  local id out=""
  for id in $WIDS; do out="$out $id:$(iters "$id")"; done
  echo "$out"
}
# stop_workers: asks the restart-mode workers to stop; 1 if some stay stuck in I/O for 30 s.
stop_workers() {
  local w=0 pid alive
  touch "$T/stop"
  while [ "$w" -lt 300 ]; do
    alive=""
    for pid in $WPIDS; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    if [ -z "$alive" ]; then
      wait
      return 0
    fi
    sleep 0.1
    w=$((w + 1))
  done
  fail "io-across-restart" "I/O workers still blocked 30 s after being told to stop (requests never completed):$(progress)"
  return 1
}

mode_restart() {
  local n d c id it i k ok got line deadline marks s msg
  n=$(ncpus)
  for d in $VMPATH_DISKS; do
    check_disk_basics "$d" || return
  done
  # 1. Data written and flushed before the restart (even slots).
  for d in $VMPATH_DISKS; do
    c=0
    while [ "$c" -lt "$n" ]; do
      taskset -c "$c" /vmpath/guest-test.sh worker "$d" "$c" "$n" "pre-restart" 2 0 &
      c=$((c + 1))
    done
    wait
    msg=$(fsync_dev "$d") || fail "$d:pre-restart" "$msg"
  done
  [ -s "$FAILS" ] && return
  pass "pre-restart" "$((NSLOTS / 2)) slots per disk written, verified and flushed"
  # 2. Keep I/O running on every CPU (odd slots + the stream region) across the restart.
  rm -f "$T"/stop "$T"/iter.* "$T"/dead.* "$T"/mark.*
  WIDS="" WPIDS=""
  for d in $VMPATH_DISKS; do
    c=0
    while [ "$c" -lt "$n" ]; do
      taskset -c "$c" /vmpath/guest-test.sh loop_worker "$d" "$c" "$n" &
      WPIDS="$WPIDS $!"
      WIDS="$WIDS $d.$c"
      c=$((c + 1))
    done
    taskset -c $((n - 1)) /vmpath/guest-test.sh stream_worker "$d" &
    WPIDS="$WPIDS $!"
    WIDS="$WIDS $d.s"
  done
  if ! wait_past 1 120; then
    fail "io-before-restart" "the I/O loops did not complete an iteration:$(progress)"
    stop_workers
    return
  fi
  stty -echo </dev/console 2>/dev/null
  say "READY-FOR-RESTART (I/O running on $n cpus; waiting up to ${VMPATH_RESTART_WAIT}s for 'VMPATH-HOST: RESTARTED')"
  got=""
  deadline=$(($(now | cut -d. -f1) + VMPATH_RESTART_WAIT))
  while [ "$(now | cut -d. -f1)" -lt "$deadline" ]; do
    if read -r -t 5 line </dev/console; then
      case "$line" in *VMPATH-HOST:\ RESTARTED*)
        got=1
        break
        ;;
      esac
    fi
    any_dead && break
  done
  if [ -z "$got" ]; then
    any_dead || fail "restart-signal" "no 'VMPATH-HOST: RESTARTED' line from the host within ${VMPATH_RESTART_WAIT}s"
    stop_workers
    return
  fi
  for id in $WIDS; do iters "$id" >"$T/mark.$id"; done
  marks=$(progress)
  say "host restarted the target; iterations so far (worker:count):$marks"
  if wait_past 2 "$VMPATH_PROGRESS_WAIT"; then
    pass "io-across-restart" "every worker kept writing+verifying through the restart; iterations at the signal:$marks, now:$(progress)"
  else
    any_dead || fail "io-across-restart" "I/O made no progress for ${VMPATH_PROGRESS_WAIT}s after the restart:$(progress)"
  fi
  stop_workers || return
  # 3. Everything acknowledged before and during the restart is there.
  for d in $VMPATH_DISKS; do
    verify_slots "$d" "pre-restart" 0 2 "$d:pre-restart-data" &&
      pass "$d:pre-restart-data" "data written before the restart reads back intact"
    ok=1
    c=0
    while [ "$c" -lt "$n" ]; do
      it=$(iters "$d.$c")
      i=1 k=0
      while [ "$i" -lt "$NSLOTS" ]; do
        if [ $((k % n)) -eq "$c" ]; then
          set -- $(slot "$d" "$i")
          msg=$(check_block "$d" "$1" "$2" "loop$it") || {
            fail "$d:loop-data" "cpu$c slot $i (iteration $it): $msg"
            ok=0
          }
        fi
        i=$((i + 2))
        k=$((k + 1))
      done
      c=$((c + 1))
    done
    it=$(iters "$d.s")
    s=A
    [ $((it % 2)) -eq 0 ] && s=B
    msg=$(check_block "$d" $STREAM_OFF $STREAM_LEN "stream$s") || {
      fail "$d:loop-data" "stream region (iteration $it): $msg"
      ok=0
    }
    [ "$ok" = 1 ] && pass "$d:loop-data" "the last data of every I/O loop and of the stream reads back intact"
    check_flush "$d"
  done
}

case "${1:-main}" in
  worker)
    shift
    worker "$@"
    exit 0
    ;;
  loop_worker)
    shift
    loop_worker "$@"
    exit $?
    ;;
  stream_worker)
    shift
    stream_worker "$@"
    exit $?
    ;;
  main) ;;
  *)
    echo "usage: $0 main|worker|loop_worker|stream_worker" >&2
    exit 2
    ;;
esac

: >"$FAILS"
t_start=$(now)
case "$VMPATH_MODE" in
  basic) mode_basic ;;
  restart) mode_restart ;;
  stamp) mode_stamp ;;
  check-stamp) mode_check_stamp ;;
  *) fail "mode" "unknown vmpath.mode '$VMPATH_MODE'" ;;
esac
say "test time $(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s (guest clock)"
if [ -s "$FAILS" ]; then
  say "$(wc -l <"$FAILS") check(s) failed: $(sort -u "$FAILS" | tr '\n' ' ')"
  exit 1
fi
exit 0
