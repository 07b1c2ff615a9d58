//! A real Linux guest (Debian 12 kernel + busybox initramfs, QEMU 7.2 under TCG, built by
//! `ci/guest/build.sh` from Debian packages) on a vmpathd vhost-user-blk disk with two queues:
//! writes, reads back and compares on both queues, checks flush, discard and write-zeroes; then
//! survives a SIGKILL + restart of vmpathd with I/O in flight (QEMU `reconnect=1`, inflight
//! region) with no error and no acknowledged write lost. The same guest as a Linux NVMe/TCP host
//! (the kernel's own `nvme_tcp` driver) runs the same checks on a namespace exported by
//! vmpathd, its I/O scheduled as the VM its host NQN is bound to; and, connected through two
//! portals with native multipath, keeps writing and verifying while one portal turns ANA
//! inaccessible and is then removed (its connections cut). Needs root (the initramfs
//! build) and Debian's package mirrors for the first build; CI has both.

mod common;

/// Each test boots a TCG guest that needs both cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, read_log, Vmpathd, BIN};
use serde_json::json;

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

/// `ci/guest/test-against.sh --quiet`: builds the guest (cached) and boots it; the caller adds
/// the target and the mode.
fn guest_test() -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("ci/guest/test-against.sh"))
        .arg("--quiet");
    c
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
    let _serial = serial();
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

    let t0 = Instant::now();
    let basic = guest_test().arg(&sock).status().unwrap();
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
    let restart = guest_test()
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

const SUBNQN: &str = "nqn.2016-06.io.vmpath:linux-host";
const GUEST_HOSTNQN: &str = "nqn.2014-08.org.example:linux-guest";

fn nvmf_config(port: u16) -> String {
    format!(
        r#"
[[bdev]]
type = "malloc"
name = "Malloc0"
num_blocks = 524288
block_size = 512
[[path]]
name = "local0"
bdev = "Malloc0"
capacity_iops = 200000
capacity_mbps = 2000
[[vm]]
name = "owner"
[[vm]]
name = "guest-vm"
limit = {{ iops = 5000 }}
[[volume]]
name = "owner-disk"
vm = "owner"
paths = ["local0"]
[[nvmf_subsystem]]
nqn = "{SUBNQN}"
allow_any_host = true
[[nvmf_subsystem.namespace]]
bdev_name = "owner-disk"
nsid = 1
[[nvmf_subsystem.listener]]
traddr = "127.0.0.1"
trsvcid = "{port}"
[[host]]
nqn = "{GUEST_HOSTNQN}"
vm = "guest-vm"
"#
    )
}

#[test]
fn a_linux_nvme_tcp_host_is_scheduled_as_its_bound_vm() {
    let _serial = serial();
    let port = free_port();
    let d = Vmpathd::builder().config(&nvmf_config(port)).start();
    let t0 = Instant::now();
    // nvme_core.multipath=N: the namespace is the plain blk-mq disk whose queues and
    // counters the guest test reads (a native-multipath head node has neither). Header and
    // data digests on: Linux checks the CRC32C of every PDU the target sends.
    let status = guest_test()
        .arg("--nvmf")
        .arg(format!("{port},{SUBNQN},{GUEST_HOSTNQN}"))
        .arg("--append")
        .arg(
            "vmpath.disks=nvme0n1 vmpath.min_queues=1 nvme_core.multipath=N \
             vmpath.nvmf_opts=hdr_digest,data_digest",
        )
        .arg("-")
        .status()
        .unwrap();
    eprintln!(
        "Linux NVMe/TCP host guest test: {:?} in {:.1}s",
        status.code(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        status.success(),
        "the Linux NVMe/TCP host's checks failed (see the serial log above); daemon log:\n{}",
        d.log()
    );
    // Every command of the guest went through the VM its host NQN is bound to, none through
    // the volume's own VM.
    let owner = d.call("vm_get_vms", json!({"name": "owner"}));
    let bound = d.call("vm_get_vms", json!({"name": "guest-vm"}));
    let ios = bound[0]["dispatched_ios"].as_u64().unwrap();
    eprintln!(
        "guest-vm dispatched {ios} I/Os; owner {}",
        owner[0]["dispatched_ios"]
    );
    assert!(ios >= 100, "bound VM saw only {ios} I/Os: {bound}");
    assert_eq!(owner[0]["dispatched_ios"], 0, "{owner}");
    assert_eq!(bound[0]["hosts"], json!([GUEST_HOSTNQN]));
}

fn multipath_config(p1: u16, p2: u16) -> String {
    nvmf_config(p1).replace(
        "[[host]]",
        &format!(
            "[[nvmf_subsystem.listener]]\ntraddr = \"127.0.0.1\"\ntrsvcid = \"{p2}\"\n[[host]]"
        ),
    )
}

#[test]
fn a_linux_multipath_host_rides_through_an_ana_flip_and_a_portal_cut() {
    let _serial = serial();
    let p1 = free_port();
    let p2 = std::iter::repeat_with(free_port)
        .find(|&p| p != p1)
        .unwrap();
    let d = Vmpathd::builder().config(&multipath_config(p1, p2)).start();
    let dir = tempfile::Builder::new()
        .prefix("vmpath-mpath")
        .tempdir()
        .unwrap();
    let (flip, done) = (dir.path().join("flip"), dir.path().join("done"));
    let serial_log = dir.path().join("serial.log");
    // The guest's "restart" hook: ask this test to cut portal 1, wait until it has.
    let hook = format!(
        "touch {f}; i=0; while [ ! -e {d} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; [ -e {d} ]",
        f = flip.display(),
        d = done.display()
    );
    let t0 = Instant::now();
    let mut guest = guest_test()
        .arg("--log")
        .arg(&serial_log)
        .arg("--mode")
        .arg("restart")
        .arg("--restart-cmd")
        .arg(&hook)
        .arg("--nvmf")
        .arg(format!("{p1}:{p2},{SUBNQN},{GUEST_HOSTNQN}"))
        // The multipath head node is bio-based: no blk-mq queues to count.
        .arg("--append")
        .arg("vmpath.disks=nvme0n1 vmpath.min_queues=0")
        .arg("-")
        .spawn()
        .unwrap();
    let portal = json!({"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": p1.to_string()});
    let mut cut = false;
    let status = loop {
        if let Some(st) = guest.try_wait().unwrap() {
            break st;
        }
        if !cut && flip.exists() {
            // Under guest I/O on both paths: portal 1 turns inaccessible (ANA change AEN; its
            // commands fail with an ANA status and are retried on portal 2), then it is removed.
            d.call(
                "nvmf_subsystem_listener_set_ana_state",
                json!({"nqn": SUBNQN, "listen_address": portal, "ana_state": "inaccessible"}),
            );
            std::thread::sleep(Duration::from_millis(1000));
            d.call(
                "nvmf_subsystem_remove_listener",
                json!({"nqn": SUBNQN, "listen_address": portal}),
            );
            std::fs::write(&done, b"").unwrap();
            cut = true;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(400),
            "guest never finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "Linux multipath host across an ANA flip and a portal cut: {:?} in {:.1}s",
        status.code(),
        t0.elapsed().as_secs_f64()
    );
    assert!(cut, "the guest never asked for the cut");
    assert!(
        status.success(),
        "the Linux host saw an error or lost data when portal 1 went away; daemon log:\n{}",
        d.log()
    );
    // The Linux host did lose its controller on portal 1 (it keeps trying to reconnect) and
    // finished on portal 2.
    let log = read_log(&serial_log).replace('\r', "");
    let at_end: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" at the end: "))
        .collect();
    eprintln!("{}", at_end.join("\n"));
    let state_of = |port: u16| {
        at_end
            .iter()
            .find(|l| {
                let want = format!("trsvcid={port}");
                l.split([',', ' ']).any(|t| t == want)
            })
            .and_then(|l| l.rsplit("state ").next())
            .map(str::trim)
    };
    assert_eq!(state_of(p2), Some("live"), "{at_end:?}");
    let s1 = state_of(p1);
    assert!(s1.is_some() && s1 != Some("live"), "{at_end:?}");
}
