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
#   vmpath.nvmf=PORT[:PORT...],SUBNQN,HOSTNQN     be a Linux NVMe/TCP host: bring up eth0 (QEMU
#                                                 user networking), connect to 10.0.2.2:PORT (the
#                                                 host's loopback) as HOSTNQN, once per port (one
#                                                 controller each: multipath); the namespace shows
#                                                 up as nvme0n1 (test it with vmpath.disks=nvme0n1)
#   vmpath.nvmf_opts=OPT[,OPT...]                 more connect options, e.g. hdr_digest,data_digest
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

# Module parameters from the kernel command line (MODULE.PARAM=VALUE, e.g.
# nvme_core.multipath=N), handed to insmod as the kernel would hand them to modprobe.
for m in $(cat /etc/modules-load); do
  name="$(echo "${m%.ko}" | tr - _)"
  args=""
  for w in $(cat /proc/cmdline); do
    case "$w" in "$name."*) args="$args ${w#"$name".}" ;; esac
  done
  # shellcheck disable=SC2086 # one word per parameter
  insmod "/lib/modules/$m" $args || result "FAIL (insmod $m$args failed)"
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

nvmf="$(param nvmf '')"
if [ -n "$nvmf" ]; then
  ports="${nvmf%%,*}"
  rest="${nvmf#*,}"
  subnqn="${rest%%,*}"
  hostnqn="${rest#*,}"
  opts="$(param nvmf_opts '')"
  ip link set lo up && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 ||
    result "FAIL (cannot bring up eth0 for NVMe/TCP)"
  [ -c /dev/nvme-fabrics ] || result "FAIL (no /dev/nvme-fabrics: nvme_fabrics not loaded)"
  for port in $(echo "$ports" | tr ':' ' '); do
    i=0
    # The NVMe/TCP connect: the kernel's own host driver (nvme_tcp) against the target.
    until echo "transport=tcp,traddr=10.0.2.2,trsvcid=$port,nqn=$subnqn,hostnqn=$hostnqn${opts:+,$opts}" \
      >/dev/nvme-fabrics 2>/tmp/nvmf.err; do
      i=$((i + 1))
      [ "$i" -ge 20 ] && result "FAIL (NVMe/TCP connect to 10.0.2.2:$port failed: $(cat /tmp/nvmf.err))"
      sleep 0.5
    done
  done
  nvme_states() {
    for c in /sys/class/nvme/nvme*; do
      echo "VMPATH-GUEST: NVMe/TCP ${c##*/}$1: $(cat "$c/transport" 2>/dev/null)" \
        "$(cat "$c/address" 2>/dev/null) subsys $(cat "$c/subsysnqn" 2>/dev/null)" \
        "state $(cat "$c/state" 2>/dev/null)"
    done
  }
  nvme_states ""
fi

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
  [ "$i" -ge 100 ] && result "FAIL (no disk appeared within 10 s; wanted:${want:- any} found:${found:- none})"
  sleep 0.1
done
# shellcheck disable=SC2086 # word splitting trims the list
VMPATH_DISKS="$(echo $want)"
export VMPATH_DISKS
echo "VMPATH-GUEST: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus, mode $VMPATH_MODE, disks $VMPATH_DISKS"

ok=0
/vmpath/guest-test.sh main && ok=1
[ -n "$nvmf" ] && nvme_states " at the end"
if [ "$ok" = 1 ]; then
  result "PASS (mode $VMPATH_MODE, disks $VMPATH_DISKS)"
else
  result "FAIL (mode $VMPATH_MODE, disks $VMPATH_DISKS; see CHECK lines above)"
fi
