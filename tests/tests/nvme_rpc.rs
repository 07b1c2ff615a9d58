//! The daemon's `bdev_nvme_*` RPCs end to end: a config-file controller at start, a second
//! path attached by RPC, paths and controllers listed, options set, the namespace used as a
//! bdev, `save_config` round trip, path events on the event bus, detach.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmpath_config::Config;
use vmpath_mgmt::RpcClient;
use vmpath_tests::target::{TestTarget, NQN};
use vmpathd::{Daemon, DaemonOptions};

fn first_core() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    let list = line.split(':').nth(1).unwrap().trim();
    list.split([',', '-']).next().unwrap().parse().unwrap()
}

#[test]
#[allow(clippy::field_reassign_with_default)] // DaemonOptions grows as subsystems add flags.
fn nvme_rpcs_attach_list_save_and_detach() {
    let t = TestTarget::start(None, &[("127.0.0.1", "0"), ("127.0.0.1", "0")], 256, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vmpath.sock");
    let text = format!(
        "[[nvme_controller]]\nname = \"Nvme0\"\ntraddr = \"127.0.0.1\"\ntrsvcid = \"{}\"\nsubnqn = \"{NQN}\"\nkeep_alive_timeout_ms = 2000\nreconnect_delay_ms = 200\n",
        t.portals[0].1
    );
    let config = Config::from_str(&text, "test.toml").unwrap();
    // By field: DaemonOptions grows as other subsystems add flags.
    let mut opts = DaemonOptions::default();
    opts.cores = Some(vec![first_core()]);
    opts.rpc_socket = Some(sock.clone());
    opts.no_pin = true;
    opts.vhost_socket_dir = Some(dir.path().to_path_buf());
    let d = Daemon::start(config, opts).unwrap();
    let mut c = RpcClient::connect(&sock).unwrap();
    let bdevs = c
        .call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"})))
        .unwrap();
    assert_eq!(bdevs[0]["num_blocks"], 256);
    assert_eq!(bdevs[0]["type"], "nvme");
    // A second path by RPC (same name, other portal).
    let r = c
        .call(
            "bdev_nvme_attach_controller",
            Some(json!({
                "name": "Nvme0", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
                "trsvcid": t.portals[1].1, "subnqn": NQN, "multipath": "multipath",
                "fast_io_fail_timeout_ms": 800, "ctrlr_loss_timeout_sec": 5
            })),
        )
        .unwrap();
    assert_eq!(r, json!(["Nvme0n1"]));
    let until = Instant::now() + Duration::from_secs(5);
    let paths = loop {
        let p = c
            .call("bdev_nvme_get_io_paths", Some(json!({"name": "Nvme0n1"})))
            .unwrap();
        let live = p["io_paths"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["state"] == "optimized")
            .count();
        if live == 2 || Instant::now() > until {
            break p;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let list = paths["io_paths"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{paths}");
    assert!(list
        .iter()
        .all(|p| p["state"] == "optimized" && p["outstanding_ios"] == 0));
    let ctrls = c.call("bdev_nvme_get_controllers", None).unwrap();
    assert_eq!(ctrls[0]["name"], "Nvme0");
    assert_eq!(ctrls[0]["ctrlrs"].as_array().unwrap().len(), 2);
    assert_eq!(
        ctrls[0]["ctrlrs"][1]["options"]["fast_io_fail_timeout_ms"],
        800
    );
    assert_eq!(
        ctrls[0]["ctrlrs"][1]["options"]["ctrlr_loss_timeout_ms"],
        5000
    );
    // Options by group, policy, bad params.
    assert_eq!(
        c.call(
            "bdev_nvme_set_options",
            Some(json!({"name": "Nvme0", "timeout_us": 2_000_000}))
        )
        .unwrap(),
        Value::Bool(true)
    );
    assert!(c
        .call(
            "bdev_nvme_set_options",
            Some(json!({"reconnect_delay_sec": 1, "reconnect_delay_ms": 5}))
        )
        .is_err());
    c.call(
        "bdev_nvme_set_multipath_policy",
        Some(json!({"name": "Nvme0n1", "policy": "active_active", "selector": "queue_depth"})),
    )
    .unwrap();
    let e = c
        .call(
            "bdev_nvme_attach_controller",
            Some(json!({"name": "Nvme1", "traddr": "127.0.0.1", "subnqn": NQN, "trsvcid": "x"})),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("trsvcid"), "{e}");
    // save_config rebuilds both controllers with their effective timers.
    let saved = c.call("save_config", None).unwrap();
    let text = saved["config"].as_str().unwrap();
    let back = Config::from_str(text, "saved").unwrap();
    assert_eq!(back.nvme_controllers.len(), 2);
    assert_eq!(back.nvme_controllers[0].keep_alive_timeout_ms, Some(2000));
    assert_eq!(back.nvme_controllers[1].fast_io_fail_timeout_ms, Some(800));
    assert_eq!(
        back.nvme_controllers
            .iter()
            .filter(|n| n.timeout_us == Some(2_000_000))
            .count(),
        2
    );
    // Path events reached the event bus.
    let ev = c
        .call("vmpath_get_events", Some(json!({"since": 0})))
        .unwrap();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(kinds.contains(&"nvme_path_up"), "{kinds:?}");
    // Detach one path, then the group: the bdev goes away with its last path.
    c.call(
        "bdev_nvme_detach_controller",
        Some(json!({"name": "Nvme0", "traddr": "127.0.0.1", "trsvcid": t.portals[1].1})),
    )
    .unwrap();
    let p = c.call("bdev_nvme_get_io_paths", None).unwrap();
    assert_eq!(p["io_paths"].as_array().unwrap().len(), 1);
    c.call(
        "bdev_nvme_detach_controller",
        Some(json!({"name": "Nvme0"})),
    )
    .unwrap();
    assert!(c
        .call("bdev_get_bdevs", Some(json!({"name": "Nvme0n1"})))
        .is_err());
    assert!(c
        .call(
            "bdev_nvme_detach_controller",
            Some(json!({"name": "Nvme0"}))
        )
        .is_err());
    let saved = c.call("save_config", None).unwrap();
    assert!(!saved["config"]
        .as_str()
        .unwrap()
        .contains("nvme_controller"));
    d.shutdown();
}
