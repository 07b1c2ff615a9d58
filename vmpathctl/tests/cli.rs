//! Runs the `vmpathctl` binary against an in-process RPC server with a fake daemon handler,
//! and against a socket where nothing listens.

use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use vmpath_config::{BdevConfig, Config, MallocBdevParams, NullBdevParams};
use vmpath_mgmt::{parse_params, EventBus, RpcError, RpcHandler, RpcServer, ServerOptions};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmpathctl-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake vmpathd: keeps bdev configs in a list and answers like the daemon would.
struct FakeDaemon {
    bdevs: Mutex<Vec<BdevConfig>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParam {
    name: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionalName {
    #[serde(default)]
    name: Option<String>,
}

fn bdev_json(b: &BdevConfig) -> Value {
    let (block_size, num_blocks, params) = match b {
        BdevConfig::Malloc(p) => (p.block_size, p.num_blocks, json!(p)),
        BdevConfig::Null(p) => (p.block_size, p.num_blocks, json!(p)),
        BdevConfig::Uring(p) => (p.block_size.unwrap_or(512), 1024, json!(p)),
    };
    json!({
        "name": b.name(), "type": b.kind().as_str(), "block_size": block_size,
        "num_blocks": num_blocks, "uuid": "8d5e5a3c-1f2d-4c5e-9a7b-1234567890ab",
        "params": params,
        "stats": {"read_ops": 0, "write_ops": 0, "bytes_read": 0, "bytes_written": 0}
    })
}

impl FakeDaemon {
    fn add(&self, b: BdevConfig) -> Result<Value, RpcError> {
        b.validate().map_err(RpcError::invalid_params)?;
        let mut bdevs = self.bdevs.lock().unwrap();
        if bdevs.iter().any(|x| x.name() == b.name()) {
            return Err(RpcError::exists(format!("bdev {}", b.name())));
        }
        let name = b.name().to_owned();
        bdevs.push(b);
        Ok(json!(name))
    }
}

impl RpcHandler for FakeDaemon {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "vmpath_get_version" => {
                Ok(json!({"version": "0.1.0", "fields": {"major": 0, "minor": 1}}))
            }
            "bdev_malloc_create" => self.add(parse_params::<MallocBdevParams>(params)?.into()),
            "bdev_null_create" => self.add(parse_params::<NullBdevParams>(params)?.into()),
            "bdev_delete" => {
                let p: NameParam = parse_params(params)?;
                let mut bdevs = self.bdevs.lock().unwrap();
                let i = bdevs
                    .iter()
                    .position(|b| b.name() == p.name)
                    .ok_or_else(|| RpcError::no_device(format!("bdev {}", p.name)))?;
                bdevs.remove(i);
                Ok(json!(true))
            }
            "bdev_get_bdevs" => {
                let p: OptionalName = parse_params(params)?;
                let bdevs = self.bdevs.lock().unwrap();
                let list: Vec<Value> = bdevs
                    .iter()
                    .filter(|b| p.name.as_deref().is_none_or(|n| n == b.name()))
                    .map(bdev_json)
                    .collect();
                if list.is_empty() {
                    if let Some(n) = p.name {
                        return Err(RpcError::no_device(format!("bdev {n}")));
                    }
                }
                Ok(json!(list))
            }
            "framework_get_reactors" => Ok(json!({"tick_rate": 1_000_000_000u64, "reactors": [
                {"id": 0, "lcore": 2, "state": "sleeping", "busy_ticks": 10, "idle_ticks": 90,
                 "poller_runs": 100, "messages": 3, "sleeps": 7}]})),
            "save_config" => {
                let config = Config {
                    bdevs: self.bdevs.lock().unwrap().clone(),
                    ..Config::default()
                };
                let text = config.to_toml_string().map_err(RpcError::internal)?;
                Ok(json!({ "config": text }))
            }
            _ => Err(RpcError::method_not_found(method)),
        }
    }

    fn methods(&self) -> Vec<String> {
        [
            "vmpath_get_version",
            "bdev_malloc_create",
            "bdev_null_create",
            "bdev_delete",
            "bdev_get_bdevs",
            "framework_get_reactors",
            "save_config",
        ]
        .map(String::from)
        .to_vec()
    }
}

struct Fixture {
    dir: TempDir,
    bus: Arc<EventBus>,
    _server: RpcServer,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new();
        let bus = Arc::new(EventBus::new(16));
        let handler = Arc::new(FakeDaemon {
            bdevs: Mutex::new(Vec::new()),
        });
        let options = ServerOptions {
            events: Some(Arc::clone(&bus)),
            ..ServerOptions::default()
        };
        let server = RpcServer::bind_with(dir.0.join("rpc.sock"), handler, options).unwrap();
        Fixture {
            dir,
            bus,
            _server: server,
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.0.join("rpc.sock")
    }

    fn run(&self, args: &[&str]) -> Output {
        let sock = self.sock();
        let mut full = vec!["-r", sock.to_str().unwrap()];
        full.extend_from_slice(args);
        vmpathctl(&full)
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8(out.stderr).unwrap()
    }
}

fn vmpathctl(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vmpathctl"))
        .args(args)
        .env_remove("VMPATH_RPC_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn bdev_lifecycle_through_the_cli() {
    let f = Fixture::new();
    assert_eq!(
        f.ok(&["bdev_malloc_create", "-b", "Malloc1", "64", "4096"]),
        "Malloc1\n"
    );
    assert_eq!(
        f.ok(&[
            "bdev-null-create",
            "Null1",
            "1",
            "512",
            "--max-iops",
            "1000"
        ]),
        "Null1\n"
    );
    let table = f.ok(&["bdev_get_bdevs"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(lines[1].starts_with("Malloc1  malloc"), "{table}");
    assert!(
        lines[1].contains("16384") && lines[1].contains("64 MiB"),
        "{table}"
    );
    assert!(
        lines[2].contains("2048") && lines[2].contains("1000"),
        "{table}"
    );

    // --json gives the raw result.
    let json: Value =
        serde_json::from_str(&f.ok(&["--json", "bdev_get_bdevs", "-b", "Null1"])).unwrap();
    assert_eq!(json[0]["name"], "Null1");
    assert_eq!(json[0]["params"]["max_iops"], 1000);

    // Errors from the daemon: message on stderr, exit code 1.
    let err = f.fails(&["bdev_malloc_create", "-b", "Malloc1", "1", "512"]);
    assert!(
        err.contains("bdev_malloc_create: File exists: bdev Malloc1"),
        "{err}"
    );
    assert!(err.contains("-17"), "{err}");
    let err = f.fails(&["bdev_malloc_create", "-b", "Bad", "1", "1000"]);
    assert!(
        err.contains("block_size: must be 512 or 4096, got 1000"),
        "{err}"
    );
    assert!(err.contains("-32602"), "{err}");

    assert_eq!(f.ok(&["bdev_delete", "Malloc1"]), "deleted bdev Malloc1\n");
    let err = f.fails(&["bdev_delete", "Malloc1"]);
    assert!(err.contains("No such device: bdev Malloc1"), "{err}");
    let err = f.fails(&["bdev_get_bdevs", "-b", "Malloc1"]);
    assert!(err.contains("No such device"), "{err}");

    // save_config to a file, which parses as a config with the remaining bdev.
    let out = f.dir.0.join("saved.toml");
    assert_eq!(f.ok(&["save_config", "-o", out.to_str().unwrap()]), "");
    let saved = Config::from_file(&out).unwrap();
    assert_eq!(saved.bdevs.len(), 1);
    assert_eq!(saved.bdevs[0].name(), "Null1");
    // And to stdout.
    let text = f.ok(&["save-config"]);
    assert_eq!(Config::from_str(&text, "stdout").unwrap(), saved);
}

#[test]
fn other_commands() {
    let f = Fixture::new();
    assert_eq!(
        f.ok(&["version"]),
        "vmpathd 0.1.0\n  major: 0\n  minor: 1\n"
    );
    let methods = f.ok(&["rpc_get_methods"]);
    assert!(
        methods.lines().any(|m| m == "vmpath_get_events"),
        "{methods}"
    );
    assert!(methods.lines().any(|m| m == "bdev_get_bdevs"), "{methods}");

    let reactors = f.ok(&["framework_get_reactors"]);
    assert!(
        reactors.starts_with("tick rate: 1000000000 Hz\nID"),
        "{reactors}"
    );
    assert!(
        reactors.contains("sleeping") && reactors.contains("10.0%"),
        "{reactors}"
    );

    f.bus.publish("bdev_created", json!({"name": "X"}));
    f.bus.publish("bdev_deleted", json!({"name": "X"}));
    let events = f.ok(&["vmpath_get_events", "--since", "2"]);
    assert!(
        events.contains("bdev_deleted") && !events.contains("bdev_created"),
        "{events}"
    );
    assert!(events.ends_with("(next: --since 3)\n"), "{events}");

    // Generic call: pretty JSON of any method.
    let out = f.ok(&["call", "bdev_get_bdevs", "{}"]);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), json!([]));
    let err = f.fails(&["call", "nvmf_get_subsystems"]);
    assert!(
        err.contains("Method not found: \"nvmf_get_subsystems\""),
        "{err}"
    );
    assert!(err.contains("-32601"), "{err}");
    let err = f.fails(&["call", "bdev_get_bdevs", "{not json"]);
    assert!(err.contains("params are not valid JSON"), "{err}");
    let err = f.fails(&["call", "bdev_delete", r#"{"nme": "x"}"#]);
    assert!(err.contains("unknown field `nme`"), "{err}");
}

#[test]
fn socket_from_environment() {
    let f = Fixture::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmpathctl"))
        .arg("version")
        .env("VMPATH_RPC_SOCKET", f.sock())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .starts_with("vmpathd 0.1.0"));
}

#[test]
fn daemon_not_running() {
    let dir = TempDir::new();
    let sock = dir.0.join("missing.sock");
    let out = vmpathctl(&["-r", sock.to_str().unwrap(), "bdev_get_bdevs"]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "vmpathctl: error: cannot connect to vmpathd at {}: no such file (is vmpathd \
             running? start it with 'vmpathd' or pass -r/--rpc-socket)\n",
            sock.display()
        )
    );
    // A stale socket file: refused.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let out = vmpathctl(&["-r", sock.to_str().unwrap(), "version"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("connection refused (is vmpathd running?"),
        "{err}"
    );
}

#[test]
fn every_subcommand_has_help() {
    let subcommands = [
        "vmpath_get_version",
        "rpc_get_methods",
        "bdev_malloc_create",
        "bdev_null_create",
        "bdev_uring_create",
        "bdev_delete",
        "bdev_get_bdevs",
        "framework_get_reactors",
        "save_config",
        "vmpath_get_events",
        "call",
    ];
    let top = vmpathctl(&["--help"]);
    assert!(top.status.success());
    let top = String::from_utf8(top.stdout).unwrap();
    for sub in subcommands {
        assert!(top.contains(sub), "{sub} missing from --help:\n{top}");
        let out = vmpathctl(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("Usage: vmpathctl"), "{help}");
        assert!(help.contains("--rpc-socket"), "{help}");
    }
    // A bad command line is a usage error (exit code 2), not a daemon error.
    let out = vmpathctl(&["bdev_malloc_create", "-b", "M", "sixty-four", "4096"]);
    assert_eq!(out.status.code(), Some(2));
}
