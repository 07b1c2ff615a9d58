//! The NVMe/TCP target inside the daemon: configured subsystems come up, a host writes and
//! reads back through the test initiator, the `nvmf_*` RPCs change subsystems at run time
//! (ANA state reaching a connected host), bad RPC input gets clear errors, save_config
//! keeps the subsystems, shutdown closes the connections.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{pattern, rpc_code, Vmpathd};
use nvme_spec::log::parse_ana_log;
use nvme_spec::{AnaState, LogPageId, Status};
use nvmf_target::testing::{Host, InitiatorOptions};
use serde_json::{json, Value};

const NQN: &str = "nqn.2016-06.io.vmpath:cnode1";

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

/// A daemon on `config`, on the first CPU.
fn start(config: &str) -> Vmpathd {
    Vmpathd::builder().first_core().config(config).start()
}

/// The portal of the first listener of `nqn`.
fn portal(d: &Vmpathd, nqn: &str) -> SocketAddr {
    let subs = d.call("nvmf_get_subsystems", json!({"nqn": nqn}));
    let l = &subs[0]["listen_addresses"][0];
    format!(
        "{}:{}",
        l["traddr"].as_str().unwrap(),
        l["trsvcid"].as_str().unwrap()
    )
    .parse()
    .unwrap()
}

fn opts() -> InitiatorOptions {
    InitiatorOptions {
        timeout: Duration::from_secs(5),
        ..InitiatorOptions::default()
    }
}

#[test]
fn configured_subsystem_serves_io_and_rpcs_change_it() {
    let d = start(CONFIG);
    let subs = d.call("nvmf_get_subsystems", Value::Null);
    assert_eq!(subs[0]["subtype"], "Discovery");
    assert_eq!(subs[1]["nqn"], NQN);
    assert_eq!(subs[1]["serial_number"], "VMPATH-DAEMON-1");
    assert_eq!(subs[1]["namespaces"][0]["bdev_name"], "Malloc0");
    let addr = portal(&d, NQN);
    assert_ne!(addr.port(), 0);

    let mut h = Host::connect(addr, NQN, &opts(), 1).unwrap();
    let data = pattern(5, 8192);
    h.io[0].write(1, 16, &data, 512).unwrap().ok().unwrap();
    assert_eq!(
        h.io[0].read(1, 16, 16, 512).unwrap().ok().unwrap().data,
        data
    );
    let subs = d.call("nvmf_get_subsystems", json!({"nqn": NQN}));
    assert_eq!(subs[0]["controllers"].as_array().unwrap().len(), 1);

    // Add a namespace, a second portal and an ANA change by RPC.
    let nsid = d.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "Null0", "anagrpid": 7}}),
    );
    assert_eq!(nsid, 2);
    d.call(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "0"}}),
    );
    d.call(
        "nvmf_subsystem_listener_set_ana_state",
        json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": addr.port().to_string()},
               "ana_state": "non_optimized", "anagrpid": 7}),
    );
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
        .write(2, 1, &pattern(1, 4096), 4096)
        .unwrap()
        .ok()
        .unwrap();

    // Bad input: clear errors, nothing changes.
    let e = d
        .try_call("nvmf_create_subsystem", json!({"nqn": "cnode9"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("nqn"), "{e}");
    let e = d
        .try_call("nvmf_create_subsystem", json!({"nqn": NQN}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -17);
    let e = d
        .try_call(
            "nvmf_create_subsystem",
            json!({"nqn": "nqn.2016-06.io.vmpath:x", "colour": 1}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
    let e = d
        .try_call(
            "nvmf_delete_subsystem",
            json!({"nqn": "nqn.2016-06.io.vmpath:nope"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    let e = d
        .try_call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Nope"}}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    let e = d
        .try_call(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": "Malloc0", "nsid": 1}}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -17);
    let e = d
        .try_call(
            "nvmf_subsystem_listener_set_ana_state",
            json!({"nqn": NQN, "listen_address": {"traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}, "ana_state": "sideways"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    let e = d
        .try_call(
            "nvmf_subsystem_add_listener",
            json!({"nqn": NQN, "listen_address": {"trtype": "rdma", "traddr": "127.0.0.1", "trsvcid": "4420"}}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("trtype"), "{e}");
    let e = d
        .try_call(
            "nvmf_subsystem_remove_listener",
            json!({"nqn": NQN, "listen_address": {"traddr": "127.0.0.1", "trsvcid": "1"}}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    let e = d
        .try_call("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 9}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    let e = d
        .try_call("bdev_delete", json!({"name": "Malloc0"}))
        .unwrap_err();
    assert!(e.to_string().contains(NQN), "{e}");
    let e = d
        .try_call(
            "nvmf_subsystem_add_host",
            json!({"nqn": NQN, "host": "not an nqn"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
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
    );
    d.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": other, "namespace": {"bdev_name": "Null0"}}),
    );
    d.call(
        "nvmf_subsystem_add_listener",
        json!({"nqn": other, "listen_address": {"traddr": "127.0.0.1", "trsvcid": addr.port().to_string()}}),
    );
    match Host::connect(addr, other, &opts(), 1) {
        Err(nvmf_target::testing::InitiatorError::Status(s)) => {
            assert_eq!(s, Status::CONNECT_INVALID_HOST)
        }
        other => panic!("connected to a locked subsystem: {other:?}"),
    }
    d.call(
        "nvmf_subsystem_add_host",
        json!({"nqn": other, "host": opts().hostnqn}),
    );
    let mut h2 = Host::connect(addr, other, &opts(), 1).unwrap();
    h2.io[0].read(1, 0, 1, 4096).unwrap().ok().unwrap();

    // save_config keeps everything; a daemon started from it exports the same.
    let saved = d.call("save_config", Value::Null);
    let text = saved["config"].as_str().unwrap().to_string();
    assert!(text.contains("[[nvmf_subsystem]]"), "{text}");
    assert!(text.contains(other));
    let before = d.call("nvmf_get_subsystems", Value::Null);
    // Remove the subsystem: its host is disconnected.
    d.call("nvmf_delete_subsystem", json!({"nqn": other}));
    h2.io[0].wait_closed().unwrap();
    drop(h);
    drop(d);
    let d2 = start(&text);
    let after = d2.call("nvmf_get_subsystems", Value::Null);
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
    let mut d = start(CONFIG);
    let addr = portal(&d, NQN);
    let mut h = Host::connect(addr, NQN, &opts(), 1).unwrap();
    let data = pattern(9, 4096);
    h.io[0].write(1, 0, &data, 512).unwrap().ok().unwrap();
    d.send_signal(libc::SIGTERM);
    h.io[0].wait_closed().unwrap();
    h.admin.wait_closed().unwrap();
    let st = d.wait_exit();
    assert!(st.success(), "{st:?}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "portal still open"
    );
}
