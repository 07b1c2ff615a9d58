//! End-to-end tests of the `vmpathd` binary: start, RPC, bad input, save_config, signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmpath_mgmt::{ClientError, RpcClient};

struct Vmpathd {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

fn first_core() -> String {
    // The first CPU this test process may use, so the daemon's -m always fits.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    let list = line.split(':').nth(1).unwrap().trim();
    let first = list.split([',', '-']).next().unwrap();
    format!("[{first}]")
}

impl Vmpathd {
    fn start(config: Option<&str>) -> Vmpathd {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vmpath.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmpathd"));
        cmd.arg("-r")
            .arg(&sock)
            .arg("-m")
            .arg(first_core())
            .arg("-S")
            .arg(dir.path())
            .arg("--nvmf-port")
            .arg("0");
        if let Some(text) = config {
            let path = dir.path().join("vmpath.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("-c").arg(&path);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Vmpathd {
            child,
            sock,
            _dir: dir,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut c) = RpcClient::connect(&self.sock) {
                if c.call("vmpath_get_version", None).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("vmpathd did not come up on {}", self.sock.display());
    }

    fn client(&self) -> RpcClient {
        RpcClient::connect(&self.sock).unwrap()
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let p = if params.is_null() { None } else { Some(params) };
        self.client().call(method, p)
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // Send the signal with the `kill` command.
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "vmpathd did not exit on signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmpathd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rpc_code(e: &ClientError) -> i32 {
    e.rpc()
        .unwrap_or_else(|| panic!("not an RPC error: {e}"))
        .code
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
    let d = Vmpathd::start(None);
    let v = d.call("vmpath_get_version", Value::Null).unwrap();
    assert!(v["version"].as_str().unwrap().starts_with("vmpath v"));
    let bdevs = d.call("bdev_get_bdevs", Value::Null).unwrap();
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
    let r = d.call("framework_get_reactors", Value::Null).unwrap();
    assert_eq!(r["reactors"].as_array().unwrap().len(), 1);
    let methods = d.call("rpc_get_methods", Value::Null).unwrap();
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
    let d = Vmpathd::start(None);
    // Unknown method.
    let e = d.call("bdev_frobnicate", Value::Null).unwrap_err();
    assert_eq!(rpc_code(&e), -32601);
    assert!(e.to_string().contains("bdev_frobnicate"), "{e}");
    // Missing params.
    let e = d.call("bdev_malloc_create", Value::Null).unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    // Invalid value, named.
    let e = d
        .call(
            "bdev_malloc_create",
            json!({"name": "M1", "num_blocks": 16, "block_size": 1000}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("block_size"), "{e}");
    // Unknown field, named.
    let e = d
        .call(
            "bdev_null_create",
            json!({"name": "N1", "num_blocks": 16, "block_size": 512, "colour": "red"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("colour"), "{e}");
    // Wrong type.
    let e = d
        .call(
            "bdev_null_create",
            json!({"name": "N1", "num_blocks": "many", "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    // Duplicate.
    let e = d
        .call(
            "bdev_malloc_create",
            json!({"name": "Malloc0", "num_blocks": 16, "block_size": 512}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -17);
    // A backend file that cannot be opened: the message names the file.
    let e = d
        .call(
            "bdev_uring_create",
            json!({"name": "U0", "filename": "/nonexistent/vmpath-disk.img"}),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/vmpath-disk.img"),
        "{e}"
    );
    // Objects that do not exist.
    let e = d.call("bdev_delete", json!({"name": "Nope"})).unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    // Create, delete, then use the deleted object.
    let n = d
        .call(
            "bdev_malloc_create",
            json!({"name": "Tmp0", "num_blocks": 256, "block_size": 512}),
        )
        .unwrap();
    assert_eq!(n, "Tmp0");
    assert_eq!(
        d.call("bdev_delete", json!({"name": "Tmp0"})).unwrap(),
        true
    );
    let e = d
        .call("bdev_get_bdevs", json!({"name": "Tmp0"}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    assert!(e.to_string().contains("Tmp0"), "{e}");
    let e = d.call("bdev_delete", json!({"name": "Tmp0"})).unwrap_err();
    assert_eq!(rpc_code(&e), -19);

    // Malformed JSON on a raw connection: parse error, and the daemon still serves others.
    {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&d.sock).unwrap();
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":").unwrap();
        s.write_all(b" nonsense}\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["error"]["code"], -32700);
    }
    // Still alive and consistent.
    let bdevs = d.call("bdev_get_bdevs", Value::Null).unwrap();
    assert_eq!(
        names(&bdevs),
        vec!["Malloc0", "Null0", "vm1-disk", "vm2-disk"]
    );
}

#[test]
fn save_config_rebuilds_the_same_state() {
    let d = Vmpathd::start(None);
    d.call(
        "bdev_malloc_create",
        json!({"name": "Slow0", "num_blocks": 1024, "block_size": 512,
               "latency_us": 50, "max_iops": 1000, "uuid": "8d5e5a3c-1f2d-4c5e-9a7b-1234567890ab"}),
    )
    .unwrap();
    d.call("bdev_delete", json!({"name": "Null0"})).unwrap();
    d.call(
        "vm_create",
        json!({"name": "vm3", "shares": 300, "limit": {"iops": 5000}}),
    )
    .unwrap();
    d.call(
        "sched_path_add",
        json!({"name": "slow0", "bdev": "Slow0", "capacity_iops": 1000, "capacity_mbps": 4}),
    )
    .unwrap();
    d.call(
        "volume_create",
        json!({"name": "vm3-disk", "vm": "vm3", "paths": ["slow0"], "num_blocks": 100}),
    )
    .unwrap();
    let vms_before = d.call("vm_get_vms", Value::Null).unwrap();
    let before = d.call("bdev_get_bdevs", Value::Null).unwrap();
    let saved = d.call("save_config", Value::Null).unwrap();
    let text = saved["config"].as_str().unwrap().to_string();
    drop(d);
    let d2 = Vmpathd::start(Some(&text));
    let after = d2.call("bdev_get_bdevs", Value::Null).unwrap();
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
    let vms_after = d2.call("vm_get_vms", Value::Null).unwrap();
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
        let mut d = Vmpathd::start(None);
        let st = d.signal(sig);
        assert!(st.success(), "exit status {st:?} on signal {sig}");
        assert!(!Path::new(&d.sock).exists(), "socket left behind");
    }
}

#[test]
fn bad_config_file_fails_with_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[bdev]]\ntype = \"malloc\"\nname = \"M\"\nnum_blocks = 8\nblock_size = 1000\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpathd"))
        .arg("-c")
        .arg(&path)
        .arg("-r")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("bdev[0].block_size"), "{err}");
    assert!(err.contains("512 or 4096"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_vmpathd"))
        .arg("-c")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.toml"), "{err}");

    // A uring bdev on a file that cannot be opened: the daemon refuses to start and says why.
    std::fs::write(
        &path,
        "[[bdev]]\ntype = \"uring\"\nname = \"U\"\nfilename = \"/nonexistent/disk.img\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vmpathd"))
        .arg("-c")
        .arg(&path)
        .arg("-r")
        .arg(dir.path().join("s.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let d = Vmpathd::start(None);
    let out = Command::new(env!("CARGO_BIN_EXE_vmpathd"))
        .arg("-r")
        .arg(&d.sock)
        .arg("-m")
        .arg(first_core())
        .arg("-S")
        .arg(d._dir.path())
        .arg("--nvmf-port")
        .arg("0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The first one is untouched.
    d.call("bdev_get_bdevs", Value::Null).unwrap();
}

#[test]
fn vms_paths_and_volumes_by_rpc() {
    let d = Vmpathd::start(None);
    // The default config: two VMs with different shares on one path.
    let vms = d.call("vm_get_vms", Value::Null).unwrap();
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
    let paths = d.call("sched_get_paths", Value::Null).unwrap();
    assert_eq!(paths.as_array().unwrap().len(), 1);

    // Create, change, suspend, resume.
    d.call("vm_create", json!({"name": "vm3", "shares": 500}))
        .unwrap();
    let e = d.call("vm_create", json!({"name": "vm3"})).unwrap_err();
    assert_eq!(rpc_code(&e), -17);
    d.call(
        "vm_set_qos",
        json!({"name": "vm3", "shares": 700, "limit": {"iops": 900}}),
    )
    .unwrap();
    let v = d.call("vm_get_vms", json!({"name": "vm3"})).unwrap();
    assert_eq!(v[0]["spec"]["shares"], 700);
    assert_eq!(v[0]["spec"]["limit"]["iops"], 900);
    d.call("vm_suspend", json!({"name": "vm3"})).unwrap();
    let v = d.call("vm_get_vms", json!({"name": "vm3"})).unwrap();
    assert!(!v[0]["suspended"].as_array().unwrap().is_empty(), "{v}");
    d.call("vm_resume", json!({"name": "vm3"})).unwrap();
    let v = d.call("vm_get_vms", json!({"name": "vm3"})).unwrap();
    assert!(v[0]["suspended"].as_array().unwrap().is_empty(), "{v}");

    // Bad input: each a clear error, nothing changes.
    let e = d
        .call("vm_create", json!({"name": "bad", "shares": 0}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("shares"), "{e}");
    let e = d
        .call("vm_set_qos", json!({"name": "nope", "shares": 10}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    let e = d
        .call("vm_set_qos", json!({"name": "vm3", "sharez": 10}))
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(e.to_string().contains("sharez"), "{e}");
    // A reservation the paths cannot carry is refused (local0 is estimated at 200k IOPS).
    let e = d
        .call(
            "vm_create",
            json!({"name": "greedy", "reservation": {"iops": 10_000_000}}),
        )
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("reserv"), "{e}");
    assert_eq!(
        d.call("vm_get_vms", Value::Null)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // A volume must fit its storage and name a real VM and path.
    let e = d
        .call("volume_create", json!({"name": "v", "vm": "vm3", "paths": ["local0"], "offset_blocks": 16000, "num_blocks": 1000}))
        .unwrap_err();
    assert!(e.to_string().contains("fit"), "{e}");
    let e = d
        .call(
            "volume_create",
            json!({"name": "v", "vm": "nope", "paths": ["local0"]}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    d.call("volume_create", json!({"name": "vm3-disk", "vm": "vm3", "paths": ["local0"], "offset_blocks": 16000, "num_blocks": 384}))
        .unwrap();
    // A VM with a volume cannot be deleted; after the volume goes, it can.
    let e = d.call("vm_delete", json!({"name": "vm3"})).unwrap_err();
    assert_eq!(rpc_code(&e), -16);
    d.call("volume_delete", json!({"name": "vm3-disk"}))
        .unwrap();
    d.call("vm_delete", json!({"name": "vm3"})).unwrap();
    let e = d.call("vm_get_vms", json!({"name": "vm3"})).unwrap_err();
    assert_eq!(rpc_code(&e), -19);
    // Path state changes are accepted and visible.
    d.call(
        "sched_path_set_state",
        json!({"name": "local0", "state": "non-optimized"}),
    )
    .unwrap();
    let paths = d.call("sched_get_paths", Value::Null).unwrap();
    assert!(paths.to_string().contains("non-optimized"), "{paths}");
    let e = d
        .call(
            "sched_path_set_state",
            json!({"name": "local0", "state": "sideways"}),
        )
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
}
