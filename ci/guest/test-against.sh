#!/usr/bin/env bash
# Entry point for the workspace tests and CI: builds the guest (cached, see build.sh), boots it
# against the vhost-user-blk server on SOCKET and returns 0 if the guest test passed, 1 if it
# failed (or the build failed), 2 on a usage error.
#
# Usage: ci/guest/test-against.sh [run-qemu.sh options] SOCKET [extra qemu args...]
# Same options as run-qemu.sh. Unlike run-qemu.sh it passes vmpath.wce=strict: the target must
# report a write-back cache (VIRTIO_BLK_F_CONFIG_WCE with wce=1) so guests send flushes; a later
# "--append vmpath.wce=enable" lets the guest switch the cache on instead.
# Examples:
#   ci/guest/test-against.sh /run/vmpath/vm1.sock
#   ci/guest/test-against.sh --mode restart --restart-cmd 'my-restart-script' /run/vmpath/vm1.sock
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

append="vmpath.wce=strict"
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --append) append="$append $2" && shift 2 ;;
    --quiet) pass+=("$1") && shift ;;
    -h | --help) exec "$HERE/run-qemu.sh" --help ;;
    --*) pass+=("$1" "$2") && shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || exec "$HERE/run-qemu.sh" --help

if ! "$HERE/build.sh" --quiet >/dev/null; then
  echo "test-against: FAIL: building the guest failed (run ci/guest/build.sh to see why)" >&2
  exit 1
fi
rc=0
"$HERE/run-qemu.sh" "${pass[@]}" --append "$append" "$@" || rc=$?
[ "$rc" -le 2 ] || rc=1
exit "$rc"
