//! The harness shared by the daemon's integration tests: a [`Vmpathd`] process started from
//! the built binary in a temporary directory (config file, RPC socket and vhost sockets all in
//! that directory, stderr captured to a log file that is shown when a test fails), RPC calls
//! through `vmpath_mgmt::RpcClient`, and small helpers (CPU, ports, data patterns, guest
//! drivers) that several tests need.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vhost::frontend::{BlkDriver, DriverOptions};
use vmpath_mgmt::{ClientError, RpcClient};

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_vmpathd");

/// How long a daemon may take to answer its first RPC.
const STARTUP: Duration = Duration::from_secs(30);

/// How long a daemon may take to exit after a signal.
const EXIT: Duration = Duration::from_secs(20);

/// Reads a daemon log file; an unreadable one reads as empty (it is only ever shown).
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The first CPU this test process may use, so a daemon pinned to it always fits.
pub fn first_core() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    line.split(':')
        .nth(1)
        .unwrap()
        .trim()
        .split([',', '-'])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `len` bytes of a xorshift sequence; different seeds give different data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The JSON-RPC error code of `e`; panics if `e` is not an RPC error.
pub fn rpc_code(e: &ClientError) -> i32 {
    e.rpc()
        .unwrap_or_else(|| panic!("not an RPC error: {e}"))
        .code
}

/// A vhost-user-blk guest driver on `sock` with `queues` queues of 128 direct descriptors
/// (three per request, so QD 32) and 64 KiB data buffers.
pub fn blk_driver(sock: &Path, queues: u16) -> BlkDriver {
    BlkDriver::connect(
        sock,
        DriverOptions {
            num_queues: queues,
            queue_size: 128,
            max_data: 64 * 1024,
            ..DriverOptions::default()
        },
    )
    .unwrap()
}

/// How to start a daemon: see [`Vmpathd::builder`].
pub struct Builder {
    name: String,
    config: Option<String>,
    args: Vec<OsString>,
}

impl Builder {
    /// Names the daemon in messages and its temporary directory (for tests with several).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Starts from this config text (written to `vmpath.toml` and passed with `-c`); without
    /// it the daemon runs its built-in default config.
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_string());
        self
    }

    /// One more command-line argument, e.g. `--nvmf-port`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More command-line arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs the reactor on [`first_core`] only (`-m [N]`).
    pub fn first_core(self) -> Self {
        let mask = format!("[{}]", first_core());
        self.arg("-m").arg(mask)
    }

    /// `vmpathd -r <sock> -S <dir> [-c <dir>/vmpath.toml] <args>`, writing the config file.
    fn command(&self, dir: &Path, sock: &Path) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("-r").arg(sock).arg("-S").arg(dir);
        if let Some(text) = &self.config {
            let path = dir.join("vmpath.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("-c").arg(&path);
        }
        cmd.args(&self.args);
        cmd
    }

    /// Starts the daemon in a new temporary directory and waits until it answers RPCs.
    pub fn start(self) -> Vmpathd {
        let dir = tempfile::Builder::new()
            .prefix(&self.name)
            .tempdir()
            .unwrap();
        let sock = dir.path().join("rpc.sock");
        let log = dir.path().join("vmpathd.log");
        let child = self
            .command(dir.path(), &sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Vmpathd {
            name: self.name,
            child,
            sock,
            log,
            dir,
        };
        d.wait_ready();
        d
    }

    /// Runs the daemon in the foreground with its files in `dir` and RPC socket `sock`, for
    /// tests that expect it to refuse to start; returns its exit status and output.
    pub fn output(self, dir: &Path, sock: &Path) -> Output {
        self.command(dir, sock).output().unwrap()
    }
}

/// A running `vmpathd` process, killed when dropped (its log is printed then if the test is
/// failing).
pub struct Vmpathd {
    name: String,
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Vmpathd {
    /// A builder for a daemon with the default config and no extra arguments.
    pub fn builder() -> Builder {
        Builder {
            name: "vmpathd".to_string(),
            config: None,
            args: Vec::new(),
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(mut c) = RpcClient::connect(&self.sock) {
                if c.call("vmpath_get_version", None).is_ok() {
                    return;
                }
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("{} exited at start ({st}): {}", self.name, self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not come up on {}: {}",
                    self.name,
                    self.sock.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The RPC socket.
    pub fn sock(&self) -> &Path {
        &self.sock
    }

    /// The daemon's directory (`-S`: vhost sockets are created here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the daemon's directory, e.g. a vhost socket by its configured name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// One RPC on a new connection; `Value::Null` params are sent as no params.
    pub fn try_call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let p = if params.is_null() { None } else { Some(params) };
        RpcClient::connect(&self.sock)
            .unwrap_or_else(|e| panic!("{}: connect: {e}\n{}", self.name, self.log()))
            .call(method, p)
    }

    /// One RPC that must succeed; a failure panics with the error and the daemon log.
    pub fn call(&self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .unwrap_or_else(|e| panic!("{}: {method}: {e}\n{}", self.name, self.log()))
    }

    /// Sends signal `sig` (with the `kill` command) without waiting.
    pub fn send_signal(&self, sig: i32) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the daemon to exit; panics if it is still running after 20 s.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends signal `sig` and waits for the daemon to exit.
    pub fn signal(&mut self, sig: i32) -> ExitStatus {
        self.send_signal(sig);
        self.wait_exit()
    }
}

impl Drop for Vmpathd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}
