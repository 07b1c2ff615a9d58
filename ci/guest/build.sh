#!/usr/bin/env bash
# Builds everything the real-guest vhost-user-blk test needs, from Debian 12 packages only:
#   - QEMU 7.2 (qemu-system-x86 + qemu-system-common + qemu-system-data + seabios and the shared
#     libraries it needs that are not installed), unpacked with `dpkg -x`, never installed: the
#     image's qemu-utils 10 conflicts with Debian 12's qemu-system-common;
#   - the Debian kernel (linux-image-amd64 -> its versioned linux-image package);
#   - a busybox initramfs (cpio newc + gzip) with the virtio and NVMe/TCP host modules, /init
#     and the guest test.
# Idempotent and cached under the work dir ($VMPATH_GUEST_DIR, default ci/work): downloads happen
# once, the initramfs is rebuilt only when its inputs change. Prints the work dir's env file path.
# Usage: ci/guest/build.sh [--quiet]
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
W="${VMPATH_GUEST_DIR:-$REPO/ci/work}"
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1

log() { [ "$QUIET" = 1 ] || echo "guest/build: $*" >&2; }
die() {
  echo "guest/build: ERROR: $*" >&2
  exit 1
}

DEBS="$W/debs"
QROOT="$W/qemu-root"
KROOT="$W/kernel-root"
OUT="$W/guest"
mkdir -p "$DEBS" "$QROOT" "$KROOT" "$OUT"
# One build at a time per work dir (tests may call this concurrently).
exec 9>"$W/.build.lock"
flock 9

APT_OPTS=(-q)
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)

lists_ready=0
ensure_lists() {
  [ "$lists_ready" = 1 ] && return 0
  if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    log "apt lists missing: apt-get update"
    apt-get update -qq || die "apt-get update failed (needs root and Debian's package mirrors)"
  fi
  lists_ready=1
}

# deb_of NAME: path of the cached .deb of package NAME (downloads it once).
deb_of() {
  local name="$1" f
  f=$(ls "$DEBS/${name}"_*.deb 2>/dev/null | sed -n 1p || true)
  if [ -z "$f" ]; then
    ensure_lists
    log "apt-get download $name"
    (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download "$name" >/dev/null) ||
      die "apt-get download $name failed"
    f=$(ls "$DEBS/${name}"_*.deb 2>/dev/null | sed -n 1p || true)
    [ -n "$f" ] || die "apt-get download $name produced no file"
  fi
  echo "$f"
}

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == *"install ok installed"* ]]
}

# deps_of DEB: one line per dependency group ("a|b|c"), version constraints and :arch stripped.
deps_of() {
  dpkg-deb -f "$1" Depends 2>/dev/null | tr ',' '\n' |
    sed -e 's/([^)]*)//g' -e 's/:[a-z0-9]*//g' -e 's/[[:space:]]//g' | grep -v '^$' || true
}

# ---------------------------------------------------------------- QEMU 7.2, unpacked
QEMU_STAMP="$QROOT/.unpacked"
if [ ! -f "$QEMU_STAMP" ]; then
  log "fetching QEMU 7.2 packages"
  rm -rf "$QROOT" && mkdir -p "$QROOT"
  # Explicit packages; the library closure follows qemu-system-x86's Depends (not the GUI/audio
  # ones of qemu-system-common) and takes only what the machine does not already have.
  declare -A seen=()
  queue=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
  follow=(qemu-system-x86)
  for p in "${queue[@]}"; do seen[$p]=1; done
  unpack=()
  while [ ${#queue[@]} -gt 0 ]; do
    p="${queue[0]}"
    queue=("${queue[@]:1}")
    deb=$(deb_of "$p")
    unpack+=("$deb")
    case " ${follow[*]} " in *" $p "*) ;; *) continue ;; esac
    while read -r group; do
      [ -n "$group" ] || continue
      satisfied=0
      IFS='|' read -ra alts <<<"$group"
      for a in "${alts[@]}"; do
        if is_installed "$a" || [ -n "${seen[$a]:-}" ]; then
          satisfied=1
          break
        fi
      done
      [ "$satisfied" = 1 ] && continue
      pick=""
      for a in "${alts[@]}"; do
        if apt-cache show "$a" >/dev/null 2>&1 || ls "$DEBS/${a}"_*.deb >/dev/null 2>&1; then
          pick="$a"
          break
        fi
      done
      if [ -z "$pick" ]; then
        log "note: dependency '$group' of $p is virtual or unknown; relying on the ldd check"
        continue
      fi
      seen[$pick]=1
      queue+=("$pick")
      follow+=("$pick") # libraries' own dependencies are followed too
    done < <(deps_of "$deb")
  done
  for deb in "${unpack[@]}"; do
    log "dpkg -x $(basename "$deb")"
    dpkg -x "$deb" "$QROOT"
  done
  touch "$QEMU_STAMP"
fi

QEMU_BIN="$QROOT/usr/bin/qemu-system-x86_64"
[ -x "$QEMU_BIN" ] || die "qemu-system-x86_64 missing from $QROOT (delete it and retry)"
QEMU_LD="$QROOT/usr/lib/x86_64-linux-gnu:$QROOT/lib/x86_64-linux-gnu"
missing=$(LD_LIBRARY_PATH="$QEMU_LD" ldd "$QEMU_BIN" | grep 'not found' || true)
[ -z "$missing" ] || die "qemu-system-x86_64 still misses shared libraries:
$missing"
QEMU_FW=("$QROOT/usr/share/qemu" "$QROOT/usr/share/seabios" "$QROOT/usr/lib/ipxe/qemu")
QEMU_VERSION=$(LD_LIBRARY_PATH="$QEMU_LD" "$QEMU_BIN" --version) ||
  die "qemu-system-x86_64 --version failed"
QEMU_VERSION="${QEMU_VERSION%%$'\n'*}"
log "$QEMU_VERSION"

# ---------------------------------------------------------------- kernel + modules
KMETA=$(deb_of linux-image-amd64)
KPKG=$(dpkg-deb -f "$KMETA" Depends | tr ',' '\n' | sed -n 's/^[[:space:]]*\(linux-image-[0-9][^[:space:]]*\).*/\1/p' | sed -n 1p)
[ -n "$KPKG" ] || die "cannot find the versioned kernel package in linux-image-amd64's Depends"
KVER="${KPKG#linux-image-}"
KSTAMP="$KROOT/.unpacked-$KVER"
if [ ! -f "$KSTAMP" ]; then
  KDEB=$(deb_of "$KPKG")
  log "unpacking kernel $KVER (vmlinuz + virtio modules only)"
  rm -rf "$KROOT" && mkdir -p "$KROOT"
  dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$KROOT" --wildcards \
    "./boot/vmlinuz-$KVER" "./boot/config-$KVER" "./lib/modules/$KVER/modules.builtin" \
    "./lib/modules/$KVER/kernel/drivers/virtio/*" "./lib/modules/$KVER/kernel/drivers/block/virtio_blk.ko*"
  echo "$KDEB" >"$KROOT/.deb"
  touch "$KSTAMP"
fi
KDEB=$(cat "$KROOT/.deb")
MODDIR="$KROOT/lib/modules/$KVER"

# module_file NAME: path of NAME's .ko (extracted from the kernel package on demand); empty if built in.
module_file() {
  local name="$1" alt f
  alt=$(echo "$name" | tr '_-' '-_')
  if grep -Eq "/(${name}|${alt})\.ko(\.[a-z]+)?$" "$MODDIR/modules.builtin"; then
    return 0
  fi
  f=$(find "$MODDIR" \( -name "$name.ko*" -o -name "$alt.ko*" \) | sed -n 1p)
  if [ -z "$f" ]; then
    dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$KROOT" --wildcards "*/$name.ko*" "*/$alt.ko*" 2>/dev/null || true
    f=$(find "$MODDIR" \( -name "$name.ko*" -o -name "$alt.ko*" \) | sed -n 1p)
  fi
  [ -n "$f" ] || die "kernel module $name not found in $KDEB"
  echo "$f"
}

# modinfo_depends KO: the module's "depends=" list from its .modinfo section.
modinfo_depends() {
  local ko="$1"
  case "$ko" in
    *.xz) xz -dc "$ko" ;;
    *.zst) zstd -dc "$ko" ;;
    *.gz) gzip -dc "$ko" ;;
    *) cat "$ko" ;;
  esac | tr '\0' '\n' | sed -n 's/^depends=//p' | sed -n 1p | tr ',' ' '
}

# Load order: dependencies first (depth-first post-order).
declare -A mod_done=()
MOD_ORDER=()
add_module() {
  local name="$1" ko dep
  [ -n "${mod_done[$name]:-}" ] && return 0
  mod_done[$name]=1
  ko=$(module_file "$name")
  [ -n "$ko" ] || return 0 # built in
  for dep in $(modinfo_depends "$ko"); do add_module "$dep"; done
  MOD_ORDER+=("$ko")
}
# virtio_net and nvme_tcp: the guest can also be a Linux NVMe/TCP host (run-qemu.sh --nvmf);
# crc32c_generic: its header and data digests (loaded by hand, there is no modprobe).
for m in virtio_pci virtio_blk virtio_net nvme_tcp crc32c_generic; do add_module "$m"; done

# ---------------------------------------------------------------- busybox
BBDEB=$(deb_of busybox-static)
BBROOT="$W/busybox-root"
if [ ! -x "$BBROOT/bin/busybox" ]; then
  rm -rf "$BBROOT" && mkdir -p "$BBROOT"
  dpkg -x "$BBDEB" "$BBROOT"
fi
BB="$BBROOT/bin/busybox"
BB_APPLETS=$("$BB" --list)
for applet in sh dd cmp blkdiscard taskset awk poweroff insmod stty ip; do
  grep -qx "$applet" <<<"$BB_APPLETS" || die "busybox-static lacks the '$applet' applet"
done

# ---------------------------------------------------------------- blkzero (BLKZEROOUT helper)
# Busybox cannot send write-zeroes requests; a tiny std-only Rust program can. Built with plain
# rustc, glibc statically linked (crt-static), so it needs no libraries in the initramfs.
BLKZERO="$OUT/blkzero"
if command -v rustc >/dev/null 2>&1; then
  bz_hash=$( (
    sha256sum "$HERE/blkzero.rs"
    rustc --version
  ) | sha256sum | cut -d' ' -f1)
  if [ ! -x "$BLKZERO" ] || [ "$(cat "$OUT/.blkzero-hash" 2>/dev/null)" != "$bz_hash" ]; then
    log "rustc blkzero.rs (static)"
    rm -f "$BLKZERO"
    if rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
      -o "$BLKZERO.tmp" "$HERE/blkzero.rs" 2>"$OUT/blkzero.err" &&
      ldd "$BLKZERO.tmp" 2>&1 | grep -Eq 'not a dynamic executable|statically linked'; then
      mv "$BLKZERO.tmp" "$BLKZERO"
      echo "$bz_hash" >"$OUT/.blkzero-hash"
    else
      rm -f "$BLKZERO.tmp"
      log "note: static blkzero build failed (see $OUT/blkzero.err); the write-zeroes check will be skipped"
    fi
  fi
else
  rm -f "$BLKZERO"
  log "note: no rustc; the guest's write-zeroes check will be skipped"
fi

# ---------------------------------------------------------------- initramfs
INPUT_HASH=$( (
  sha256sum "$HERE/init.sh" "$HERE/guest-test.sh" "$HERE/build.sh" "$BB" "${MOD_ORDER[@]}"
  [ -x "$BLKZERO" ] && sha256sum "$BLKZERO"
  echo "$KVER"
) | sha256sum | cut -d' ' -f1)
INITRD="$OUT/initramfs.gz"
if [ ! -f "$INITRD" ] || [ "$(cat "$OUT/.initrd-hash" 2>/dev/null)" != "$INPUT_HASH" ]; then
  log "building initramfs"
  STAGE="$OUT/stage"
  rm -rf "$STAGE"
  mkdir -p "$STAGE"/{bin,dev,proc,sys,tmp,run,etc,lib/modules,vmpath}
  cp "$BB" "$STAGE/bin/busybox"
  for applet in $BB_APPLETS; do
    [ -e "$STAGE/bin/$applet" ] || ln -s busybox "$STAGE/bin/$applet"
  done
  [ -x "$BLKZERO" ] && cp "$BLKZERO" "$STAGE/bin/blkzero"
  cp "$HERE/init.sh" "$STAGE/init"
  cp "$HERE/guest-test.sh" "$STAGE/vmpath/guest-test.sh"
  chmod 755 "$STAGE/init" "$STAGE/vmpath/guest-test.sh"
  : >"$STAGE/etc/modules-load"
  for ko in "${MOD_ORDER[@]}"; do
    base=$(basename "$ko")
    case "$ko" in
      *.xz) xz -dc "$ko" >"$STAGE/lib/modules/${base%.xz}" && base="${base%.xz}" ;;
      *.zst) zstd -qdc "$ko" >"$STAGE/lib/modules/${base%.zst}" && base="${base%.zst}" ;;
      *.gz) gzip -dc "$ko" >"$STAGE/lib/modules/${base%.gz}" && base="${base%.gz}" ;;
      *) cp "$ko" "$STAGE/lib/modules/$base" ;;
    esac
    echo "$base" >>"$STAGE/etc/modules-load"
  done
  echo "$KVER" >"$STAGE/etc/kernel-version"
  # The kernel needs /dev/console in the initramfs to give /init its stdio.
  mknod -m 600 "$STAGE/dev/console" c 5 1 || die "mknod /dev/console failed (run as root)"
  (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | "$BB" cpio -o -H newc 2>/dev/null) |
    gzip -9 >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  echo "$INPUT_HASH" >"$OUT/.initrd-hash"
  rm -rf "$STAGE"
fi
cp -f "$KROOT/boot/vmlinuz-$KVER" "$OUT/vmlinuz"

# ---------------------------------------------------------------- env file for run-qemu.sh
ENVF="$OUT/env.sh"
{
  echo "# generated by ci/guest/build.sh"
  printf 'QEMU_BIN=%q\n' "$QEMU_BIN"
  printf 'QEMU_LD=%q\n' "$QEMU_LD"
  printf 'QEMU_FW=(%s)\n' "$(printf '%q ' "${QEMU_FW[@]}")"
  printf 'QEMU_VERSION=%q\n' "$QEMU_VERSION"
  printf 'QSD_BIN_UNPACKED=%q\n' "$QROOT/usr/bin/qemu-storage-daemon"
  printf 'GUEST_KERNEL=%q\n' "$OUT/vmlinuz"
  printf 'GUEST_INITRD=%q\n' "$INITRD"
  printf 'GUEST_KVER=%q\n' "$KVER"
} >"$ENVF.tmp"
mv "$ENVF.tmp" "$ENVF"
log "ready: kernel $KVER, initramfs $(du -h "$INITRD" | cut -f1), modules: $(for k in "${MOD_ORDER[@]}"; do basename "$k"; done | tr '\n' ' ')"
echo "$ENVF"
