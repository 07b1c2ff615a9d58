//! Property test of the whole RPC surface: every method, called with arbitrary JSON params
//! (random shapes, plausible field names, wrong types, huge and negative numbers), returns a
//! result or a JSON-RPC error — it never panics — and the daemon still serves afterwards.
//!
//! Methods that would reach outside this process are left out: connecting to arbitrary
//! addresses (`bdev_nvme_attach_controller`), listening on arbitrary addresses
//! (`nvmf_subsystem_add_listener`), and writing or opening arbitrary paths (`save_config`,
//! `bdev_uring_create`, `vhost_create_blk_controller`).

mod common;

use std::sync::Arc;

use common::first_core;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use vmpath_mgmt::RpcHandler;
use vmpathd::{Daemon, DaemonOptions};

const SKIP: &[&str] = &[
    "bdev_nvme_attach_controller",
    "nvmf_subsystem_add_listener",
    "save_config",
    "bdev_uring_create",
    "vhost_create_blk_controller",
];

const KEYS: &[&str] = &[
    "name",
    "num_blocks",
    "block_size",
    "uuid",
    "latency_us",
    "max_iops",
    "max_bw_mbps",
    "nqn",
    "bdev",
    "bdev_name",
    "vm",
    "paths",
    "shares",
    "reservation",
    "limit",
    "iops",
    "mbps",
    "priority",
    "path_policy",
    "selector",
    "affinity",
    "failover",
    "state",
    "ctrlr",
    "nsid",
    "anagrpid",
    "ana_state",
    "host",
    "offset_blocks",
    "capacity_iops",
    "capacity_mbps",
    "fabric_path",
    "since",
    "max",
    "wait_ms",
    "listen_address",
    "traddr",
    "trsvcid",
    "allow_any_host",
    "serial_number",
    "model_number",
    "current",
    "max_held",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..5000).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9._:-]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "Malloc0",
            "Null0",
            "vm1",
            "vm2",
            "vm1-disk",
            "local0",
            "optimized",
            "inaccessible",
            "suspend",
            "hold",
            "high",
            "round-robin",
            "vm-affinity",
            "nqn.2016-06.io.vmpath:cnode1",
            "",
            "\u{0}",
            "../../etc",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                let mut m = Map::new();
                for (k, v) in kv {
                    m.insert(k.to_string(), v);
                }
                Value::Object(m)
            }),
        ]
    })
}

fn daemon() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = vmpath_config::Config::default_builtin();
    config
        .nvmf_subsystems
        .iter_mut()
        .for_each(|s| s.listeners.clear());
    config.vhost.socket_dir = dir.path().to_path_buf();
    let d = Daemon::start(
        config,
        DaemonOptions {
            cores: Some(vec![first_core()]),
            rpc_socket: Some(dir.path().join("rpc.sock")),
            no_pin: true,
            vhost_socket_dir: Some(dir.path().to_path_buf()),
            ..DaemonOptions::default()
        },
    )
    .unwrap();
    (d, dir)
}

#[test]
fn every_method_survives_arbitrary_params() {
    let (d, _dir) = daemon();
    let handler: Arc<dyn RpcHandler> = Arc::new(vmpathd::rpc::Handler::new(d.state().clone()));
    let methods: Vec<String> = handler
        .methods()
        .into_iter()
        .filter(|m| !SKIP.contains(&m.as_str()))
        .collect();
    assert!(methods.len() > 30, "{methods:?}");
    let errors = std::cell::Cell::new(0u64);
    let oks = std::cell::Cell::new(0u64);
    for m in &methods {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 200,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&json_value(), |params| {
                let p = if params.is_null() { None } else { Some(params) };
                match handler.call(m, p) {
                    Ok(_) => oks.set(oks.get() + 1),
                    Err(e) => {
                        errors.set(errors.get() + 1);
                        prop_assert!(!e.message.is_empty(), "{m}: empty error message");
                        prop_assert!(e.code != 0, "{m}: error code 0");
                    }
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{m}: {e}"));
    }
    eprintln!(
        "{} methods, {} calls succeeded, {} refused with an error",
        methods.len(),
        oks.get(),
        errors.get()
    );
    // Still serving, and the built-in objects that were not deleted are intact.
    handler.call("bdev_get_bdevs", None).unwrap();
    handler.call("vm_get_vms", None).unwrap();
    handler.call("framework_get_reactors", None).unwrap();
}
