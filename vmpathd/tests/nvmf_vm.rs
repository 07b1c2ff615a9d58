//! A remote host's I/O through vmpathd's NVMe/TCP target is scheduled as a VM's: each VM volume
//! exported as a namespace carries its VM's limits, and suspending the VM holds the host's
//! commands (no error) until it resumes.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, pattern, Vmpathd};
use nvme_spec::opcode::NvmOpcode;
use nvmf_target::testing::{rw_sqe, Host, InitiatorOptions};
use serde_json::json;

const NQN: &str = "nqn.2016-06.io.vmpath:vm-volumes";

fn config(port: u16) -> String {
    format!(
        r#"
[[bdev]]
type = "malloc"
name = "Malloc0"
num_blocks = 16384
block_size = 4096
[[path]]
name = "local0"
bdev = "Malloc0"
capacity_iops = 200000
capacity_mbps = 2000
[[vm]]
name = "remote-a"
limit = {{ iops = 500 }}
[[vm]]
name = "remote-b"
[[volume]]
name = "remote-a-disk"
vm = "remote-a"
paths = ["local0"]
num_blocks = 8192
[[volume]]
name = "remote-b-disk"
vm = "remote-b"
paths = ["local0"]
offset_blocks = 8192
num_blocks = 8192
[[nvmf_subsystem]]
nqn = "{NQN}"
allow_any_host = true
[[nvmf_subsystem.namespace]]
bdev_name = "remote-a-disk"
nsid = 1
[[nvmf_subsystem.namespace]]
bdev_name = "remote-b-disk"
nsid = 2
[[nvmf_subsystem.listener]]
traddr = "127.0.0.1"
trsvcid = "{port}"
"#
    )
}

fn opts() -> InitiatorOptions {
    InitiatorOptions {
        // Also how long a suspended VM's command is shown to stay unanswered below.
        timeout: Duration::from_secs(1),
        ..InitiatorOptions::default()
    }
}

/// Keeps `qd` 4 KiB reads in flight on namespace `nsid` for `secs`; returns completions.
fn reads_for(h: &mut Host, nsid: u32, qd: usize, secs: f64) -> u64 {
    let q = &mut h.io[0];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut lba = 0u64;
    for _ in 0..qd {
        lba = (lba + 1) % 8192;
        q.submit(rw_sqe(NvmOpcode::Read, nsid, lba, 1), &[], 4096)
            .unwrap();
    }
    let mut done = 0;
    let mut inflight = qd;
    while inflight > 0 {
        let (_, c) = q.wait_any().unwrap();
        c.ok().unwrap();
        inflight -= 1;
        done += 1;
        if Instant::now() < end {
            lba = (lba + 1) % 8192;
            q.submit(rw_sqe(NvmOpcode::Read, nsid, lba, 1), &[], 4096)
                .unwrap();
            inflight += 1;
        }
    }
    done
}

#[test]
fn exported_vm_volumes_are_scheduled_as_their_vms() {
    let port = free_port();
    let d = Vmpathd::builder().config(&config(port)).start();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut h = Host::connect(addr, NQN, &opts(), 1).unwrap();

    // Data through both namespaces lands in each VM's own slice.
    let a = pattern(7, 4096);
    let b = pattern(13, 4096);
    h.io[0].write(1, 5, &a, 4096).unwrap().ok().unwrap();
    h.io[0].write(2, 5, &b, 4096).unwrap().ok().unwrap();
    assert_eq!(h.io[0].read(1, 5, 1, 4096).unwrap().ok().unwrap().data, a);
    assert_eq!(h.io[0].read(2, 5, 1, 4096).unwrap().ok().unwrap().data, b);

    // remote-a is limited to 500 IOPS; remote-b is not.
    let t0 = Instant::now();
    let na = reads_for(&mut h, 1, 16, 1.0);
    let ra = na as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let nb = reads_for(&mut h, 2, 16, 0.5);
    let rb = nb as f64 / t0.elapsed().as_secs_f64();
    eprintln!("remote-a (limit 500 IOPS): {ra:.0} IOPS; remote-b (no limit): {rb:.0} IOPS");
    assert!(
        (400.0..=560.0).contains(&ra),
        "limited VM ran at {ra:.0} IOPS"
    );
    assert!(rb > 3.0 * ra, "unlimited VM only reached {rb:.0} IOPS");
    let vm = d.call("vm_get_vms", json!({"name": "remote-a"}));
    assert!(vm[0]["dispatched_ios"].as_u64().unwrap() >= na, "{vm}");

    // Suspending remote-a holds the host's commands without an error; resume completes them.
    d.call("vm_suspend", json!({"name": "remote-a"}));
    let q = &mut h.io[0];
    let cid = q
        .submit(rw_sqe(NvmOpcode::Read, 1, 5, 1), &[], 4096)
        .unwrap();
    q.stream()
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let early = q.wait_any();
    assert!(
        early.is_err(),
        "a command completed while its VM was suspended: {early:?}"
    );
    d.call("vm_resume", json!({"name": "remote-a"}));
    q.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let c = q.wait(cid).unwrap().ok().unwrap();
    assert_eq!(c.data, a, "held read returned wrong data");
}
