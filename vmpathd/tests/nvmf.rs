//! The NVMe/TCP target inside the daemon: configured subsystems come up, a host writes and
//! reads back through the test initiator, the `nvmf_*` RPCs change subsystems at run time
//! (ANA state reaching a connected host), bad RPC input gets clear errors, save_config
//! keeps the subsystems, shutdown closes the connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nvme_spec::log::parse_ana_log;
use nvme_spec::{AnaState, LogPageId, Status};
use nvmf_target::testing::{Host, InitiatorOptions};
use serde_json::{json, Value};
use vmpath_mgmt::{ClientError, RpcClient};

const NQN: &str = "nqn.2016-06.io.vmpath:cnode1";

struct Vmpathd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

fn first_core() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    let list = line.split(':').nth(1).unwrap().trim();
    format!("[{}]", list.split([',', '-']).next().unwrap())
}

const CONFIG: &str = r#"
[[bdev]]
type = "malloc"
name = "Malloc0"
num_blocks = 4096
block_size = 512

[[bdev]]
type = "null"
name = "Null0"
num_blocks = 4096
block_size = 4096

[[nvmf_subsystem]]
nqn = "nqn.2016-06.io.vmpath:cnode1"
serial_number = "VMPATH-DAEMON-1"
allow_any_host = true

[[nvmf_subsystem.namespace]]
bdev_name = "Malloc0"
nsid = 1

[[nvmf_subsystem.listener]]
traddr = "127.0.0.1"
trsvcid = "0"
"#;

impl Vmpathd {
    fn start(config: &str) -> Vmpathd {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vmpath.sock");
        let path = dir.path().join("vmpath.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vmpathd"))
            .arg("-r")
            .arg(&sock)
            .arg("-m")
            .arg(first_core())
            .arg("-S")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Vmpathd {
            child,
            sock,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = RpcClient::connect(&d.sock) {
                if c.call("vmpath_get_version", None).is_ok() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "vmpathd did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let p = if params.is_null() { None } else { Some(params) };
        RpcClient::connect(&self.sock).unwrap().call(method, p)
    }

    /// The portal of the first listener of `nqn`.
    fn portal(&self, nqn: &str) -> SocketAddr {
        let subs = self
            .call("nvmf_get_subsystems", json!({"nqn": nqn}))
            .unwrap();
        let l = &subs[0]["listen_addresses"][0];
        format!(
            "{}:{}",
            l["traddr"].as_str().unwrap(),
            l["trsvcid"].as_str().unwrap()
        )
        .parse()
        .unwrap()
    }
}

impl Drop for Vmpathd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn code(e: &ClientError) -> i32 {
    e.rpc()
        .unwrap_or_else(|| panic!("not an RPC error: {e}"))
        .code
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn opts() -> InitiatorOptions {
    InitiatorOptions {
        timeout: Duration::from_secs(5),
        ..InitiatorOptions::default()
    }
}

#[test]
fn configured_subsystem_serves_io_and_rpcs_change_it() {
    let d = Vmpathd::start(CONFIG);
    let subs = d.call("nvmf_get_subsystems", Value::Null).unwrap();
    assert_eq!(subs[0]["subtype"], "Discovery");
    assert_eq!(subs[1]["nqn"], NQN);
    assert_eq!(subs[1]["serial_number"], "VMPATH-DAEMON-1");
    assert_eq!(subs[1]["namespaces"][0]["bdev_name"], "Malloc0");
    let addr = d.portal(NQN);
    assert_ne!(addr.port(), 0);

    let mut h = Host::connect(addr, NQN, &opts(), 1).unwrap();
    let data = pattern(8192, 5);
    h.io[0].write(1, 16, &data, 512).unwrap().ok().unwrap();
    assert_eq!(
        h.io[0].read(1, 16, 16, 512).unwrap().ok().unwrap().data,
        data
    );
    let subs = d.call("nvmf_get_subsystems", json!({"nqn": NQN})).unwrap();
    assert_eq!(subs[0]["controllers"].as_array().unwrap().len(), 1);

    // Add a namespace, a second portal and an ANA change by RPC.
    let nsid = d
        .call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Null0", "anagrpid": 7}}),
        )
        .unwrap();
    assert_eq!(nsid, 2);
    d.call(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"}}),
    )
    .unwrap();
    d.call(
        "nvmf_subsystem_listener_set_ana_state",
        json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": addr.port().to_string()},
               "ana_state": "non_optimized", "anagrpid": 7}),
    )
    .unwrap();
    let log = h
        .admin
        .get_log(LogPageId::Ana as u8, 0, 4096, 0, 0, false)
        .unwrap()
        .ok()
        .unwrap();
    let (_, groups) = parse_ana_log(&log.data).unwrap();
    let g7 = groups.iter().find(|g| g.grpid == 7).unwrap();
    assert_eq!(g7.state, AnaState::NonOptimized as u8);
    assert_eq!(g7.nsids().collect::<Vec<_>>(), vec![2]);
    h.io[0]
        .write(2, 1, &pattern(4096, 1), 4096)
        .unwrap()
        .ok()
        .unwrap();

    // Bad input: clear errors, nothing changes.
    let e = d
        .call("nvmf_create_subsystem", json!({"nqn": "cnode9"}))
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    assert!(e.to_string().contains("nqn"), "{e}");
    let e = d
        .call("nvmf_create_subsystem", json!({"nqn": NQN}))
        .unwrap_err();
    assert_eq!(code(&e), -17);
    let e = d
        .call(
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06.io.vmpath:x", "colour": 1}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
    let e = d
        .call(
            "nvmf_delete_subsystem",
            json!({"nqn": "nqn.2016-06.io.vmpath:nope"}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -19);
    let e = d
        .call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Nope"}}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -19);
    let e = d
        .call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -17);
    let e = d
        .call(
            "nvmf_subsystem_listener_set_ana_state",
            json!({"nqn": NQN, "listen_address": {"traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}, "ana_state": "sideways"}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    let e = d
        .call(
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "rdma", "traddr": "127.0.0.1", "trsvcid": "4420"}}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("trtype"), "{e}");
    let e = d
        .call(
            "nvmf_subsystem_remove_listener",
            json!({"nqn": NQN, "listen_address": {"traddr": "127.0.0.1", "trsvcid": "1"}}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -19);
    let e = d
        .call("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 9}))
        .unwrap_err();
    assert_eq!(code(&e), -19);
    let e = d
        .call("bdev_delete", json!({"name": "Malloc0"}))
        .unwrap_err();
    assert!(e.to_string().contains(NQN), "{e}");
    let e = d
        .call(
            "nvmf_subsystem_add_host",
            json!({"nqn": NQN, "host": "not an nqn"}),
        )
        .unwrap_err();
    assert_eq!(code(&e), -32602);
    // The host still works after all that.
    assert_eq!(
        h.io[0].read(1, 16, 16, 512).unwrap().ok().unwrap().data,
        data
    );

    // Host allow list by RPC.
    let other = "nqn.2016-06.io.vmpath:locked";
    d.call(
        "nvmf_create_subsystem",
        json!({"nqn": other, "serial_number": "L1"}),
    )
    .unwrap();
    d.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": other, "namespace": {"bdev_name": "Null0"}}),
    )
    .unwrap();
    d.call(
        "nvmf_subsystem_add_listener",
        json!({"nqn": other, "listen_address": {"traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}}),
    )
    .unwrap();
    match Host::connect(addr, other, &opts(), 1) {
        Err(nvmf_target::testing::InitiatorError::Status(s)) => {
            assert_eq!(s, Status::CONNECT_INVALID_HOST)
        }
        other => panic!("connected to a locked subsystem: {other:?}"),
    }
    d.call(
        "nvmf_subsystem_add_host",
        json!({"nqn": other, "host": opts().hostnqn}),
    )
    .unwrap();
    let mut h2 = Host::connect(addr, other, &opts(), 1).unwrap();
    h2.io[0].read(1, 0, 1, 4096).unwrap().ok().unwrap();

    // save_config keeps everything; a daemon started from it exports the same.
    let saved = d.call("save_config", Value::Null).unwrap();
    let text = saved["config"].as_str().unwrap().to_string();
    assert!(text.contains("[[nvmf_subsystem]]"), "{text}");
    assert!(text.contains(other));
    let before = d.call("nvmf_get_subsystems", Value::Null).unwrap();
    // Remove the subsystem: its host is disconnected.
    d.call("nvmf_delete_subsystem", json!({"nqn": other}))
        .unwrap();
    h2.io[0].wait_closed().unwrap();
    drop(h);
    drop(d);
    let d2 = Vmpathd::start(&text);
    let after = d2.call("nvmf_get_subsystems", Value::Null).unwrap();
    for (a, b) in before
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
    {
        for k in [
            "nqn",
            "serial_number",
            "allow_any_host",
            "hosts",
            "namespaces",
            "listen_addresses",
        ] {
            assert_eq!(a[k], b[k], "{k} differs for {}", a["nqn"]);
        }
    }
}

#[test]
fn shutdown_closes_connections_after_in_flight_io() {
    let mut d = Vmpathd::start(CONFIG);
    let addr = d.portal(NQN);
    let mut h = Host::connect(addr, NQN, &opts(), 1).unwrap();
    let data = pattern(4096, 9);
    h.io[0].write(1, 0, &data, 512).unwrap().ok().unwrap();
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(d.child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    h.io[0].wait_closed().unwrap();
    h.admin.wait_closed().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "vmpathd did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "portal still open"
    );
}
