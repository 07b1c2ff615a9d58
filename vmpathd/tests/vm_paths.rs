//! VM-aware path selection over real NVMe/TCP fabric paths, end to end: a target vmpathd exports
//! one RAM namespace on two portals; a host vmpathd attaches both (one multipath namespace, two
//! fabric paths), registers each fabric path as a scheduler path, and gives two VMs a volume
//! each on that namespace. With the vm-affinity policy each VM's I/O stays on its own fabric
//! path; when a portal turns ANA-inaccessible the affected VM moves to the other path with no
//! guest-visible error, and comes back when the portal is optimized again.

mod common;

use std::time::{Duration, Instant};

use common::{blk_driver, free_port, pattern, Vmpathd};
use serde_json::json;
use vhost::frontend::{BlkDriver, ReqKind};

const NQN: &str = "nqn.2016-06.io.vmpath:vmpaths-test";

/// A daemon named `name` (in messages and its directory) on `config`.
fn start(name: &str, config: &str) -> Vmpathd {
    Vmpathd::builder().name(name).config(config).start()
}

/// Writes then reads back `n` distinct 4 KiB blocks; every request must succeed and every
/// block must read back as written.
fn verified_io(d: &mut BlkDriver, seed: u64, n: u64) {
    let q = d.queue(0);
    for i in 0..n {
        let sector = (i * 8) % 32768;
        let data = pattern(seed << 32 | i, 4096);
        q.write_data(q.next_slot().unwrap(), &data).unwrap();
        q.submit(ReqKind::Write, sector, 4096, i).unwrap();
        q.kick();
        let c = q.wait_for(1, Duration::from_secs(30));
        assert_eq!(c.len(), 1, "write {i} never completed");
        assert_eq!(c[0].status, 0, "write {i} failed");
        let slot = q.submit(ReqKind::Read, sector, 4096, i).unwrap();
        q.kick();
        let c = q.wait_for(1, Duration::from_secs(30));
        assert_eq!(c.len(), 1, "read {i} never completed");
        assert_eq!(c[0].status, 0, "read {i} failed");
        let mut got = vec![0u8; 4096];
        q.read_data(slot, &mut got).unwrap();
        assert!(got == data, "block {i} read back wrong");
    }
}

fn completed_by_path(host: &Vmpathd) -> Vec<u64> {
    let v = host.call("bdev_nvme_get_io_paths", json!({"name": "Nvme0n1"}));
    let mut paths: Vec<(u64, u64)> = v["io_paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path_id"].as_u64().unwrap(),
                p["completed_ios"].as_u64().unwrap(),
            )
        })
        .collect();
    paths.sort();
    paths.into_iter().map(|p| p.1).collect()
}

fn serving_path(host: &Vmpathd, vm: &str) -> Option<u64> {
    host.call("vm_get_vms", json!({"name": vm}))[0]["serving_path"].as_u64()
}

/// Completions per fabric path between two [`completed_by_path`] samples.
fn diff(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(x, y)| x - y).collect()
}

/// Sets the ANA state of the target's portal on `port`.
fn set_portal_state(target: &Vmpathd, port: u16, state: &str) {
    target.call(
        "nvmf_subsystem_listener_set_ana_state",
        json!({"nqn": NQN, "listen_address": {"traddr": "127.0.0.1", "trsvcid": port.to_string()},
               "ana_state": state}),
    );
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_vm_keeps_its_fabric_path_and_fails_over_without_errors() {
    let (p1, p2) = (free_port(), free_port());
    let target = start(
        "vmpath-target",
        &format!(
            r#"
[[bdev]]
type = "malloc"
name = "Malloc0"
num_blocks = 16384
block_size = 4096
[[nvmf_subsystem]]
nqn = "{NQN}"
allow_any_host = true
[[nvmf_subsystem.namespace]]
bdev_name = "Malloc0"
[[nvmf_subsystem.listener]]
traddr = "127.0.0.1"
trsvcid = "{p1}"
[[nvmf_subsystem.listener]]
traddr = "127.0.0.1"
trsvcid = "{p2}"
"#
        ),
    );
    let host = start(
        "vmpath-host",
        &format!(
            r#"
[[nvme_controller]]
name = "Nvme0"
traddr = "127.0.0.1"
trsvcid = "{p1}"
subnqn = "{NQN}"
[[nvme_controller]]
name = "Nvme0"
traddr = "127.0.0.1"
trsvcid = "{p2}"
subnqn = "{NQN}"
[[path]]
name = "fabric-a"
bdev = "Nvme0n1"
fabric_path = 0
capacity_iops = 100000
capacity_mbps = 1000
[[path]]
name = "fabric-b"
bdev = "Nvme0n1"
fabric_path = 1
capacity_iops = 100000
capacity_mbps = 1000
[[vm]]
name = "vm-a"
path_policy = {{ selector = "vm-affinity" }}
[[vm]]
name = "vm-b"
path_policy = {{ selector = "vm-affinity" }}
[[volume]]
name = "vm-a-disk"
vm = "vm-a"
paths = ["fabric-a", "fabric-b"]
num_blocks = 8192
[[volume]]
name = "vm-b-disk"
vm = "vm-b"
paths = ["fabric-a", "fabric-b"]
offset_blocks = 8192
num_blocks = 8192
[[vhost_blk]]
name = "vm-a.sock"
bdev = "vm-a-disk"
[[vhost_blk]]
name = "vm-b.sock"
bdev = "vm-b-disk"
"#
        ),
    );
    // The VMs are spread over the fabric paths.
    let home_a = serving_path(&host, "vm-a").expect("vm-a has a serving path");
    let home_b = serving_path(&host, "vm-b").expect("vm-b has a serving path");
    assert_ne!(home_a, home_b, "vm-affinity put both VMs on one path");
    let mut ga = blk_driver(&host.path("vm-a.sock"), 1);
    let mut gb = blk_driver(&host.path("vm-b.sock"), 1);

    // Warm-up: each reactor opens its queue pair on a fabric path at first use; until that
    // queue is connected, requests for the path are served by another live one.
    verified_io(&mut ga, 11, 50);
    verified_io(&mut gb, 12, 50);
    let before = completed_by_path(&host);
    verified_io(&mut ga, 1, 200);
    let mid = completed_by_path(&host);
    verified_io(&mut gb, 2, 200);
    let after = completed_by_path(&host);
    let a_delta = diff(&mid, &before);
    let b_delta = diff(&after, &mid);
    eprintln!("fabric-path completions: vm-a {a_delta:?}, vm-b {b_delta:?}");
    // Scheduler path i is fabric path i here.
    assert_eq!(
        a_delta[home_a as usize], 400,
        "vm-a left its path: {a_delta:?}"
    );
    assert_eq!(
        b_delta[home_b as usize], 400,
        "vm-b left its path: {b_delta:?}"
    );

    // vm-a's portal turns inaccessible: vm-a moves to the other path, no error.
    let port_a = if home_a == 0 { p1 } else { p2 };
    set_portal_state(&target, port_a, "inaccessible");
    wait_until("vm-a to move", || {
        serving_path(&host, "vm-a") == Some(home_b)
    });
    let before = completed_by_path(&host);
    verified_io(&mut ga, 3, 100);
    let moved = completed_by_path(&host);
    let delta = diff(&moved, &before);
    eprintln!("after the cut, vm-a: {delta:?}");
    assert_eq!(
        delta[home_b as usize], 200,
        "vm-a did not fail over: {delta:?}"
    );
    assert_eq!(
        delta[home_a as usize], 0,
        "I/O went to an inaccessible path: {delta:?}"
    );

    // The portal comes back: vm-a returns to its home path.
    set_portal_state(&target, port_a, "optimized");
    wait_until("vm-a to return", || {
        serving_path(&host, "vm-a") == Some(home_a)
    });
    let before = completed_by_path(&host);
    verified_io(&mut ga, 4, 50);
    let back = completed_by_path(&host);
    let delta = diff(&back, &before);
    assert_eq!(
        delta[home_a as usize], 100,
        "vm-a did not return home: {delta:?}"
    );
    // vm-b never moved and its data is intact.
    verified_io(&mut gb, 2, 50);
}
