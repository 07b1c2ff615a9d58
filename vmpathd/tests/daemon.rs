//! End-to-end tests of the `vmpathd` binary: start, RPC, bad input, save_config, signals.

mod common;

use std::path::Path;
use std::process::Command;

use common::{rpc_code, Vmpathd, BIN};
use serde_json::{json, Value};

/// A daemon on the default config (or `config`), on the first CPU, NVMe/TCP on any free port.
fn start(config: Option<&str>) -> Vmpathd {
    let b = Vmpathd::builder().first_core().args(["--nvmf-port", "0"]);
    match config {
        Some(text) => b.config(text),
        None => b,
    }
    .start()
}

fn names(bdevs: &Value) -> Vec<String> {
    bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn default_config_serves_bdevs_and_reactors() {
    let d = start(None);
    let v = d.call("vmpath_get_version", Value::Null);
    assert!(v["version"].as_str().unwrap().starts_with("vmpath v"));
    let bdevs = d.call("bdev_get_bdevs", Value::Null);
    assert_eq!(
        names(&bdevs),
        vec!["Malloc0", "Null0", "vm1-disk", "vm2-disk"]
    );
    assert_eq!(bdevs[2]["type"], "volume");
    assert_eq!(bdevs[2]["num_blocks"], 8192);
    let m = &bdevs[0];
    assert_eq!(m["type"], "malloc");
    assert_eq!(m["block_size"], 4096);
    assert_eq!(m["num_blocks"], 16384);
    let r = d.call("framework_get_reactors", Value::Null);
    assert_eq!(r["reactors"].as_array().unwrap().len(), 1);
    let methods = d.call("rpc_get_methods", Value::Null);
    let methods: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in ["bdev_malloc_create", "save_config", "vmpath_get_events"] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
}

#[test]
fn bad_rpc_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    let d = start(None);
    // Unknown method.
    let e = d.try_call("bdev_frobnicate", Value::Null).unwrap_err();
    assert_eq!(rpc_code(&e), -32601);
    assert!(e.to_string().contains("bdev_frobnicate"), "{e}");
    // Missing params.
    let e = d.try_call("bdev_malloc_create", Value::Null).unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    // Invalid value, named.
    let e = d
        .try_call(
            "bdev_malloc_create",
            json!({"name": "M1", "num_blocks": 16, "block_size": 1000}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("block_size"), "{e}");
    // Unknown field, named.
    let e = d
        .try_call(
            "bdev_null_create",
            json!({"name": "N1", "num_blocks": 16, "block_size": 512, "colour": "red"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("colour"), "{e}");
    // Wrong type.
    let e = d
        .try_call(
            "bdev_null_create",
            json!({"name": "N1", "num_blocks": "many", "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    // Duplicate.
    let e = d
        .try_call(
            "bdev_malloc_create",
            json!({"name": "Malloc0", "num_blocks": 16, "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -17);
    // A backend file that cannot be opened: the message names the file.
    let e = d
        .try_call(
            "bdev_uring_create",
            json!({"name": "U0", "filename": "/nonexistent/vmpath-disk.img"}),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/vmpath-disk.img"),
        "{e}"
    );
    // Objects that do not exist.
    let e = d
        .try_call("bdev_delete", json!({"name": "Nope"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    // Create, delete, then use the deleted object.
    let n = d.call(
        "bdev_malloc_create",
        json!({"name": "Tmp0", "num_blocks": 256, "block_size": 512}),
    );
    assert_eq!(n, "Tmp0");
    assert_eq!(d.call("bdev_delete", json!({"name": "Tmp0"})), true);
    let e = d
        .try_call("bdev_get_bdevs", json!({"name": "Tmp0"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    assert!(e.to_string().contains("Tmp0"), "{e}");
    let e = d
        .try_call("bdev_delete", json!({"name": "Tmp0"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);

    // Malformed JSON on a raw connection: parse error, and the daemon still serves others.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(d.sock()).unwrap();
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":").unwrap();
        s.write_all(b" nonsense}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], -32700);
    }
    // Still alive and consistent.
    let bdevs = d.call("bdev_get_bdevs", Value::Null);
    assert_eq!(
        names(&bdevs),
        vec!["Malloc0", "Null0", "vm1-disk", "vm2-disk"]
    );
}

#[test]
fn save_config_rebuilds_the_same_state() {
    let d = start(None);
    d.call(
        "bdev_malloc_create",
        json!({"name": "Slow0", "num_blocks": 1024, "block_size": 512,
               "latency_us": 50, "max_iops": 1000, "uuid": "8d5e5a3c-1f2d-4c5e-9a7b-1234567890ab"}),
    );
    d.call("bdev_delete", json!({"name": "Null0"}));
    d.call(
        "vm_create",
        json!({"name": "vm3", "shares": 300, "limit": {"iops": 5000}}),
    );
    d.call(
        "sched_path_add",
        json!({"name": "slow0", "bdev": "Slow0", "capacity_iops": 1000, "capacity_mbps": 4}),
    );
    d.call(
        "volume_create",
        json!({"name": "vm3-disk", "vm": "vm3", "paths": ["slow0"], "num_blocks": 100}),
    );
    let vms_before = d.call("vm_get_vms", Value::Null);
    let before = d.call("bdev_get_bdevs", Value::Null);
    let saved = d.call("save_config", Value::Null);
    let text = saved["config"].as_str().unwrap().to_string();
    drop(d);
    let d2 = start(Some(&text));
    let after = d2.call("bdev_get_bdevs", Value::Null);
    assert_eq!(names(&before), names(&after));
    for (a, b) in before
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
    {
        for k in ["type", "block_size", "num_blocks", "uuid", "params"] {
            assert_eq!(a[k], b[k], "{k} differs for {}", a["name"]);
        }
    }
    assert_eq!(after[1]["uuid"], "8d5e5a3c-1f2d-4c5e-9a7b-1234567890ab");
    let vms_after = d2.call("vm_get_vms", Value::Null);
    let specs = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["spec"].clone())
            .collect()
    };
    assert_eq!(specs(&vms_before), specs(&vms_after));
    assert!(names(&after).contains(&"vm3-disk".to_string()));
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut d = start(None);
        let st = d.signal(sig);
        assert!(st.success(), "exit status {st:?} on signal {sig}");
        assert!(!d.sock().exists(), "socket left behind");
    }
}

/// Runs the daemon with `args`, which must make it refuse to start; returns its stderr.
fn refused(args: &[&Path]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_file_fails_with_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let sock = dir.path().join("s.sock");
    std::fs::write(
        &path,
        "[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = 8\nblock_size = 1000\n",
    )
    .unwrap();
    let err = refused(&["-c".as_ref(), &path, "-r".as_ref(), &sock]);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("bdev[0].block_size"), "{err}");
    assert!(err.contains("512 or 4096"), "{err}");

    let err = refused(&["-c".as_ref(), &dir.path().join("missing.toml")]);
    assert!(err.contains("missing.toml"), "{err}");

    // A uring bdev on a file that cannot be opened: the daemon refuses to start and says why.
    std::fs::write(
        &path,
        "[[bdev]]\ntype = \"uring\"\nname = \"U\"\nfilename = \"/nonexistent/disk.img\"\n",
    )
    .unwrap();
    let err = refused(&["-c".as_ref(), &path, "-r".as_ref(), &sock]);
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let d = start(None);
    let out = Vmpathd::builder()
        .first_core()
        .args(["--nvmf-port", "0"])
        .output(d.dir(), d.sock());
    assert!(!out.status.success());
    // The first one is untouched.
    d.call("bdev_get_bdevs", Value::Null);
}

#[test]
fn vms_paths_and_volumes_by_rpc() {
    let d = start(None);
    // The default config: two VMs with different shares on one path.
    let vms = d.call("vm_get_vms", Value::Null);
    let shares: Vec<(String, u64)> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["spec"]["shares"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares, vec![("vm1".into(), 2000), ("vm2".into(), 1000)]);
    let paths = d.call("sched_get_paths", Value::Null);
    assert_eq!(paths.as_array().unwrap().len(), 1);

    // Create, change, suspend, resume.
    d.call("vm_create", json!({"name": "vm3", "shares": 500}));
    let e = d.try_call("vm_create", json!({"name": "vm3"})).unwrap_err();
    assert_eq!(rpc_code(&e), -17);
    d.call(
        "vm_set_qos",
        json!({"name": "vm3", "shares": 700, "limit": {"iops": 900}}),
    );
    let v = d.call("vm_get_vms", json!({"name": "vm3"}));
    assert_eq!(v[0]["spec"]["shares"], 700);
    assert_eq!(v[0]["spec"]["limit"]["iops"], 900);
    d.call("vm_suspend", json!({"name": "vm3"}));
    let v = d.call("vm_get_vms", json!({"name": "vm3"}));
    assert!(!v[0]["suspended"].as_array().unwrap().is_empty(), "{v}");
    d.call("vm_resume", json!({"name": "vm3"}));
    let v = d.call("vm_get_vms", json!({"name": "vm3"}));
    assert!(v[0]["suspended"].as_array().unwrap().is_empty(), "{v}");

    // Bad input: each a clear error, nothing changes.
    let e = d
        .try_call("vm_create", json!({"name": "bad", "shares": 0}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("shares"), "{e}");
    let e = d
        .try_call("vm_set_qos", json!({"name": "nope", "shares": 10}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    let e = d
        .try_call("vm_set_qos", json!({"name": "vm3", "sharez": 10}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("sharez"), "{e}");
    // A reservation the paths cannot carry is refused (local0 is estimated at 200k IOPS).
    let e = d
        .try_call(
            "vm_create",
            json!({"name": "greedy", "reservation": {"iops": 10_000_000}}),
        )
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("reserv"), "{e}");
    assert_eq!(
        d.call("vm_get_vms", Value::Null).as_array().unwrap().len(),
        3
    );
    // A volume must fit its storage and name a real VM and path.
    let e = d
        .try_call("volume_create", json!({"name": "v", "vm": "vm3", "paths": ["local0"], "offset_blocks": 16000, "num_blocks": 1000}))
        .unwrap_err();
    assert!(e.to_string().contains("fit"), "{e}");
    let e = d
        .try_call(
            "volume_create",
            json!({"name": "v", "vm": "nope", "paths": ["local0"]}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    d.call("volume_create", json!({"name": "vm3-disk", "vm": "vm3", "paths": ["local0"], "offset_blocks": 16000, "num_blocks": 384}));
    // A VM with a volume cannot be deleted; after the volume goes, it can.
    let e = d.try_call("vm_delete", json!({"name": "vm3"})).unwrap_err();
    assert_eq!(rpc_code(&e), -16);
    d.call("volume_delete", json!({"name": "vm3-disk"}));
    d.call("vm_delete", json!({"name": "vm3"}));
    let e = d
        .try_call("vm_get_vms", json!({"name": "vm3"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    // Path state changes are accepted and visible.
    d.call(
        "sched_path_set_state",
        json!({"name": "local0", "state": "non-optimized"}),
    );
    let paths = d.call("sched_get_paths", Value::Null);
    assert!(paths.to_string().contains("non-optimized"), "{paths}");
    let e = d
        .try_call(
            "sched_path_set_state",
            json!({"name": "local0", "state": "sideways"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
}
