//! A real Linux guest (Debian 12 kernel + busybox initramfs, QEMU 7.2 under TCG, built by
//! `ci/guest/build.sh` from Debian packages) on a vmpathd vhost-user-blk disk with two queues:
//! writes, reads back and compares on both queues, checks flush, discard and write-zeroes; then
//! survives a SIGKILL + restart of vmpathd with I/O in flight (QEMU `reconnect=1`, inflight
//! region) with no error and no acknowledged write lost. Needs root (the initramfs build) and
//! Debian's package mirrors for the first build; CI has both.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{read_log, BIN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const CONFIG: &str = r#"
[[bdev]]
type = "uring"
name = "Disk0"
filename = "@DIR@/disk.img"
block_size = 512
[[path]]
name = "local0"
bdev = "Disk0"
capacity_iops = 100000
capacity_mbps = 1000
[[vm]]
name = "guest1"
[[volume]]
name = "guest1-disk"
vm = "guest1"
paths = ["local0"]
[[vhost_blk]]
name = "guest1.sock"
bdev = "guest1-disk"
num_queues = 2
"#;

/// Writes a start script that (re)starts vmpathd on `dir` and waits for the vhost socket.
fn start_script(dir: &Path) -> PathBuf {
    let script = dir.join("restart.sh");
    let body = format!(
        r#"#!/bin/sh
# Kill the running vmpathd (if any) without letting it clean up, start a new one, wait for it.
if [ -f {dir}/pid ]; then kill -9 "$(cat {dir}/pid)" 2>/dev/null; sleep 0.2; fi
rm -f {dir}/ready
{bin} -c {dir}/vmpath.toml -r {dir}/rpc.sock -S {dir} >>{dir}/vmpathd.log 2>&1 &
echo $! > {dir}/pid
i=0
while [ $i -lt 200 ]; do
  if [ -S {dir}/guest1.sock ] && [ -S {dir}/rpc.sock ] && kill -0 "$(cat {dir}/pid)" 2>/dev/null; then
    # The RPC socket is created last: the daemon is fully up.
    exit 0
  fi
  i=$((i+1)); sleep 0.05
done
echo "vmpathd did not come up" >&2
exit 1
"#,
        dir = dir.display(),
        bin = BIN,
    );
    std::fs::write(&script, body).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    script
}

struct Daemon(PathBuf);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("pid")) {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

#[test]
fn linux_guest_on_a_vmpath_disk_survives_a_target_restart() {
    let dir = tempfile::Builder::new()
        .prefix("vmpath-qemu")
        .tempdir()
        .unwrap();
    let d = dir.path();
    // 256 MiB sparse backing file: survives the daemon's SIGKILL (it is the "disk").
    let f = std::fs::File::create(d.join("disk.img")).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    std::fs::write(
        d.join("vmpath.toml"),
        CONFIG.replace("@DIR@", &d.display().to_string()),
    )
    .unwrap();
    let script = start_script(d);
    let _guard = Daemon(d.to_path_buf());
    assert!(
        Command::new(&script).status().unwrap().success(),
        "vmpathd did not start: {}",
        read_log(&d.join("vmpathd.log"))
    );
    let sock = d.join("guest1.sock");
    let harness = repo().join("ci/guest/test-against.sh");

    let t0 = Instant::now();
    let basic = Command::new("bash")
        .arg(&harness)
        .arg("--quiet")
        .arg(&sock)
        .status()
        .unwrap();
    eprintln!(
        "basic guest test: {:?} in {:.1}s",
        basic.code(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        basic.success(),
        "the guest test failed against vmpathd (see the serial log above); daemon log:\n{}",
        read_log(&d.join("vmpathd.log"))
    );

    let t0 = Instant::now();
    let restart = Command::new("bash")
        .arg(&harness)
        .arg("--quiet")
        .arg("--mode")
        .arg("restart")
        .arg("--restart-cmd")
        .arg(&script)
        .arg(&sock)
        .status()
        .unwrap();
    eprintln!(
        "restart guest test: {:?} in {:.1}s",
        restart.code(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        restart.success(),
        "the guest saw an error or lost data across a vmpathd restart; daemon log:\n{}",
        read_log(&d.join("vmpathd.log"))
    );
    assert!(t0.elapsed() < Duration::from_secs(300));
}
