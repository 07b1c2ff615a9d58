//! A remote host's I/O through vmpathd's NVMe/TCP target is scheduled as a VM's: each VM volume
//! exported as a namespace carries its VM's limits, and suspending the VM holds the host's
//! commands (no error) until it resumes. A host bound to a VM by its NQN is scheduled as that
//! VM's through any exported volume.

mod common;

/// The tests of this file measure rates and shares: they run one at a time, so that two
/// daemons never compete for the same cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, pattern, rpc_code, Vmpathd};
use nvme_spec::opcode::NvmOpcode;
use nvmf_target::testing::{rw_sqe, Host, InitiatorOptions};
use serde_json::{json, Value};

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
    let _serial = serial();
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

const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000bb";

fn opts_b() -> InitiatorOptions {
    InitiatorOptions {
        hostnqn: HOST_B.into(),
        hostid: [0xbb; 16],
        ..opts()
    }
}

fn rate(h: &mut Host, nsid: u32, secs: f64) -> f64 {
    let t0 = Instant::now();
    let n = reads_for(h, nsid, 16, secs);
    n as f64 / t0.elapsed().as_secs_f64()
}

fn dispatched(d: &Vmpathd, vm: &str) -> u64 {
    d.call("vm_get_vms", json!({ "name": vm }))[0]["dispatched_ios"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_bound_host_is_scheduled_as_its_vm_through_any_volume() {
    let _serial = serial();
    let port = free_port();
    // Host B is bound to remote-a (limit 500 IOPS) in the config.
    let cfg = format!(
        "{}\n[[host]]\nnqn = \"{HOST_B}\"\nvm = \"remote-a\"\n",
        config(port)
    );
    let d = Vmpathd::builder().config(&cfg).start();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut a = Host::connect(addr, NQN, &opts(), 1).unwrap();
    let mut b = Host::connect(addr, NQN, &opts_b(), 1).unwrap();
    let vms = d.call("vm_get_vms", json!({"name": "remote-a"}));
    assert_eq!(vms[0]["hosts"], json!([HOST_B]), "{vms}");
    assert_eq!(
        d.call("vm_get_hosts", Value::Null),
        json!([{"hostnqn": HOST_B, "vm": "remote-a"}])
    );

    // Same storage: what B writes through remote-b's volume, A reads back through it.
    let data = pattern(21, 4096);
    b.io[0].write(2, 7, &data, 4096).unwrap().ok().unwrap();
    assert_eq!(
        a.io[0].read(2, 7, 1, 4096).unwrap().ok().unwrap().data,
        data
    );

    // B's I/O on remote-b's volume is remote-a's: limited to 500 IOPS and counted there.
    let (a0, b0) = (dispatched(&d, "remote-a"), dispatched(&d, "remote-b"));
    let rb = rate(&mut b, 2, 1.0);
    let (a1, b1) = (dispatched(&d, "remote-a"), dispatched(&d, "remote-b"));
    eprintln!("host B bound to remote-a, on remote-b's volume: {rb:.0} IOPS");
    assert!(
        (400.0..=560.0).contains(&rb),
        "bound host ran at {rb:.0} IOPS"
    );
    assert!(a1 - a0 >= 400, "remote-a counted {} of B's I/Os", a1 - a0);
    assert!(b1 - b0 < 10, "remote-b counted {} of B's I/Os", b1 - b0);
    // A, not bound, runs on remote-b's volume as remote-b: unlimited.
    let ra = rate(&mut a, 2, 0.5);
    assert!(ra > 3.0 * rb, "unbound host only reached {ra:.0} IOPS");

    // Bad binding requests fail clearly and change nothing.
    let e = d
        .try_call("vm_bind_host", json!({"hostnqn": HOST_B, "vm": "nosuch"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19, "{e}");
    assert!(e.to_string().contains("nosuch"), "{e}");
    let e = d
        .try_call(
            "vm_bind_host",
            json!({"hostnqn": "not-an-nqn", "vm": "remote-a"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602, "{e}");
    // A VM with a bound host cannot be deleted until the host is unbound.
    let host_c = "nqn.2014-08.org.example:host-c";
    d.call("vm_create", json!({"name": "remote-c"}));
    d.call("vm_bind_host", json!({"hostnqn": host_c, "vm": "remote-c"}));
    let e = d
        .try_call("vm_delete", json!({"name": "remote-c"}))
        .unwrap_err();
    assert!(e.to_string().contains(host_c), "{e}");
    d.call("vm_unbind_host", json!({ "hostnqn": host_c }));
    d.call("vm_delete", json!({"name": "remote-c"}));
    let e = d
        .try_call(
            "vm_unbind_host",
            json!({"hostnqn": "nqn.2014-08.org.example:nobody"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19, "{e}");

    // Unbinding at run time reaches B's connected queue: it runs as remote-b again.
    d.call("vm_unbind_host", json!({ "hostnqn": HOST_B }));
    let free = rate(&mut b, 2, 0.5);
    eprintln!("host B unbound: {free:.0} IOPS");
    assert!(
        free > 3.0 * rb,
        "unbound host B only reached {free:.0} IOPS"
    );
    assert_eq!(d.call("vm_get_hosts", Value::Null), json!([]));
    // And binding it again limits it again, without a reconnect.
    d.call("vm_bind_host", json!({"hostnqn": HOST_B, "vm": "remote-a"}));
    let again = rate(&mut b, 2, 1.0);
    assert!(
        (400.0..=560.0).contains(&again),
        "re-bound host ran at {again:.0} IOPS"
    );
    assert_eq!(
        b.io[0].read(2, 7, 1, 4096).unwrap().ok().unwrap().data,
        data
    );
}
