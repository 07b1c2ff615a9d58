#!/bin/sh
# /init of the vmpath test guest (busybox initramfs built by ci/guest/build.sh).
# Mounts the pseudo file systems, loads the virtio modules, waits for the virtio-blk disk(s), runs
# /vmpath/guest-test.sh and prints exactly one line "VMPATH-GUEST RESULT: PASS|FAIL ..." on the
# serial console, then powers off.
# Kernel command line options (all optional):
#   vmpath.mode=basic|restart|stamp|check-stamp   what guest-test.sh does (default basic)
#   vmpath.disks=vda[,vdb...]                     disks to test (default: every vd* disk)
#   vmpath.min_queues=N                           fail unless each disk has >= N queues (default 2)
#   vmpath.discard=zero|any|off                   discard check strictness (default zero)
#   vmpath.write_zeroes=on|off                    write-zeroes check (default on)
#   vmpath.restart_wait=SECS                      restart mode: wait for the host's signal (180)
#   vmpath.progress_wait=SECS                     restart mode: wait for I/O to resume (120)
#   vmpath.wce=strict|enable                      strict: the device must report a write-back
#                                                 cache; enable: the guest may switch it on (default)
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

result() {
  echo
  echo "VMPATH-GUEST RESULT: $*"
  echo
  sync
  poweroff -f
  sleep 5
}

for m in $(cat /etc/modules-load); do
  insmod "/lib/modules/$m" || result "FAIL (insmod $m failed)"
done

# param NAME DEFAULT: value of vmpath.NAME= on the kernel command line (the last one wins).
param() {
  v="$2"
  for w in $(cat /proc/cmdline); do
    case "$w" in "vmpath.$1="*) v="${w#vmpath.$1=}" ;; esac
  done
  echo "$v"
}
VMPATH_MODE="$(param mode basic)"
VMPATH_MIN_QUEUES="$(param min_queues 2)"
VMPATH_DISCARD="$(param discard zero)"
VMPATH_WRITE_ZEROES="$(param write_zeroes on)"
VMPATH_RESTART_WAIT="$(param restart_wait 180)"
VMPATH_PROGRESS_WAIT="$(param progress_wait 120)"
VMPATH_WCE="$(param wce enable)"
export VMPATH_MODE VMPATH_MIN_QUEUES VMPATH_DISCARD VMPATH_WRITE_ZEROES VMPATH_RESTART_WAIT \
  VMPATH_PROGRESS_WAIT VMPATH_WCE
want="$(param disks '' | tr ',' ' ')"

# Wait (bounded) for the disk(s) to appear.
i=0
while :; do
  found=""
  for b in /sys/block/vd*; do [ -e "$b" ] && found="$found ${b##*/}"; done
  if [ -n "$want" ]; then
    missing=""
    for d in $want; do [ -e "/sys/block/$d" ] || missing="$missing $d"; done
    [ -z "$missing" ] && break
  elif [ -n "$found" ]; then
    sleep 1 # let a second disk, if any, finish probing
    found=""
    for b in /sys/block/vd*; do [ -e "$b" ] && found="$found ${b##*/}"; done
    want="$found"
    break
  fi
  i=$((i + 1))
  [ "$i" -ge 100 ] && result "FAIL (no virtio-blk disk appeared within 10 s; wanted:${want:- any} found:${found:- none})"
  sleep 0.1
done
# shellcheck disable=SC2086 # word splitting trims the list
VMPATH_DISKS="$(echo $want)"
export VMPATH_DISKS
echo "VMPATH-GUEST: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus, mode $VMPATH_MODE, disks $VMPATH_DISKS"

if /vmpath/guest-test.sh main; then
  result "PASS (mode $VMPATH_MODE, disks $VMPATH_DISKS)"
else
  result "FAIL (mode $VMPATH_MODE, disks $VMPATH_DISKS; see CHECK lines above)"
fi
