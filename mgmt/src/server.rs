//! The JSON-RPC 2.0 server on a Unix stream socket.
//!
//! Framing follows SPDK (`lib/jsonrpc`): a request is one JSON object, newline-terminated
//! or not, and several may follow each other on one connection, even back to back with no
//! separator (as SPDK's `rpc.py` sends them); each response is one JSON object followed by
//! `"\n"`. Batches (JSON arrays) are refused with `-32600`. Bytes that are not JSON get a
//! `-32700` response and the connection is closed (the stream cannot be re-synchronised);
//! other connections are not affected. A request without `id` is a notification and gets
//! no response (JSON-RPC 2.0 section 4.1).
//!
//! Each connection is served by its own thread (management plane, not the data path), with
//! a bound on the number of connections and on the size of one request.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{parse_params, RpcError};
use crate::events::EventBus;

/// Default bound on the size of one request, in bytes (16 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 << 20;
/// Default bound on the number of open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Name of the built-in method that lists the methods.
pub const RPC_GET_METHODS: &str = "rpc_get_methods";
/// Name of the built-in method that reads the [`EventBus`] (when one is attached).
pub const VMPATH_GET_EVENTS: &str = "vmpath_get_events";

/// How long [`RpcServer::shutdown`] waits for connections to finish their current request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The daemon's side of the RPC interface: one call per request.
///
/// `call` runs on the connection's thread; it may block (e.g. while it waits for a reactor
/// to do the work and answer by message).
pub trait RpcHandler: Send + Sync {
    /// Runs `method` with its `params` (absent or `null` = `None`).
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError>;
    /// The methods `call` knows, for `rpc_get_methods` and for operators.
    fn methods(&self) -> Vec<String>;
}

/// Limits and extras of a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most connections open at once; more are answered with an error and closed.
    pub max_connections: usize,
    /// When set, the server answers `vmpath_get_events` from this bus.
    pub events: Option<Arc<EventBus>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            events: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A live server already answers on the socket.
    #[error("another vmpathd is already listening on {} (stop it, or pass another -r/--rpc-socket)", path.display())]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed while setting up the socket.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`bind`, `remove stale socket`, ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// A running JSON-RPC server. Dropping it (or [`RpcServer::shutdown`]) stops accepting,
/// closes the connections after their current request and removes the socket file.
pub struct RpcServer {
    path: PathBuf,
    /// Device and inode of the socket file we created, to never remove someone else's.
    file_id: (u64, u64),
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("path", &self.path)
            .finish()
    }
}

struct Shared {
    handler: Arc<dyn RpcHandler>,
    options: ServerOptions,
    stopping: AtomicBool,
    next_conn_id: AtomicU64,
    /// Open connections (a clone of each stream, to shut them down on stop).
    conns: Mutex<HashMap<u64, UnixStream>>,
    conns_changed: Condvar,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, UnixStream>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RpcServer {
    /// Binds `path` with default [`ServerOptions`] and starts serving `handler`.
    pub fn bind(path: impl AsRef<Path>, handler: Arc<dyn RpcHandler>) -> Result<Self, ServerError> {
        Self::bind_with(path, handler, ServerOptions::default())
    }

    /// Binds `path` and starts serving `handler`.
    ///
    /// A stale socket file (nobody answers) is replaced; a live one is refused with
    /// [`ServerError::AlreadyRunning`]; a path that is not a socket is never removed. The
    /// socket gets mode 0600 (only the daemon's user may connect). Between `bind` and the
    /// `chmod` the file has the umask's mode; with the usual umask 022 nobody else can
    /// connect then either, since connecting needs write permission.
    pub fn bind_with(
        path: impl AsRef<Path>,
        handler: Arc<dyn RpcHandler>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let path = path.as_ref().to_owned();
        let io_err = |action, source| ServerError::Io {
            action,
            path: path.clone(),
            source,
        };
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path).map_err(|e| io_err("bind", e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("set permissions of", e))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io_err("stat", e))?;
        let shared = Arc::new(Shared {
            handler,
            options,
            stopping: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            conns_changed: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("rpc-accept".into())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(|e| io_err("start the acceptor thread for", e))?
        };
        tracing::info!(socket = %path.display(), "JSON-RPC server listening");
        Ok(RpcServer {
            path,
            file_id: (meta.dev(), meta.ino()),
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Number of connections open now.
    pub fn connection_count(&self) -> usize {
        self.shared.conns().len()
    }

    /// Stops the server: no new connections; open ones are closed once their current
    /// request is answered (waiting up to 5 s); the socket file is removed.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.file_id)
            .unwrap_or(false);
        // Wake the acceptor, blocked in accept(), by connecting to ourselves.
        let woken = ours && UnixStream::connect(&self.path).is_ok();
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(socket = %self.path.display(), error = %e, "cannot remove socket file");
            }
        }
        if woken {
            if acceptor.join().is_err() {
                tracing::error!("RPC acceptor thread panicked");
            }
        } else {
            tracing::warn!(socket = %self.path.display(), "socket file replaced or removed; RPC acceptor thread left to exit with the process");
        }
        // Reads return end-of-file; a request being handled still gets its response.
        let mut conns = self.shared.conns();
        for stream in conns.values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        while !conns.is_empty() {
            let now = std::time::Instant::now();
            if now >= deadline {
                tracing::warn!(open = conns.len(), "RPC connections still busy at shutdown");
                break;
            }
            conns = match self
                .shared
                .conns_changed
                .wait_timeout(conns, deadline - now)
            {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        tracing::info!(socket = %self.path.display(), "JSON-RPC server stopped");
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Io {
                action: "stat",
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale socket file");
            std::fs::remove_file(path).map_err(|source| ServerError::Io {
                action: "remove stale socket",
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(ServerError::Io {
            action: "probe existing socket",
            path: path.to_owned(),
            source,
        }),
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // E.g. out of file descriptors: do not spin.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let registered = {
            let mut conns = shared.conns();
            if conns.len() >= shared.options.max_connections {
                None
            } else {
                match stream.try_clone() {
                    Ok(clone) => {
                        conns.insert(id, clone);
                        Some(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot clone connection");
                        continue;
                    }
                }
            }
        };
        if registered.is_none() {
            let limit = shared.options.max_connections;
            tracing::warn!(limit, "too many RPC connections; refusing one");
            let err = RpcError::internal(format!("too many connections (limit {limit})"));
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(&encode(&error_response(Value::Null, err)));
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name(format!("rpc-conn-{id}"))
            .spawn(move || {
                serve_connection(stream, &conn_shared);
                conn_shared.conns().remove(&id);
                conn_shared.conns_changed.notify_all();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a connection thread");
            shared.conns().remove(&id);
        }
    }
}

/// Counts the bytes of the current request and fails once there are too many.
struct LimitedReader<R> {
    inner: R,
    used: Rc<Cell<usize>>,
    limit: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("request larger than {0} bytes")]
struct TooLarge(usize);

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.used.get());
        if room == 0 {
            return Err(io::Error::other(TooLarge(self.limit)));
        }
        let n = buf.len().min(room);
        let got = self.inner.read(&mut buf[..n])?;
        self.used.set(self.used.get() + got);
        Ok(got)
    }
}

fn serve_connection(stream: UnixStream, shared: &Shared) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot clone connection");
            return;
        }
    };
    let used = Rc::new(Cell::new(0));
    let reader = LimitedReader {
        inner: BufReader::new(stream),
        used: Rc::clone(&used),
        limit: shared.options.max_request_bytes,
    };
    let mut requests = serde_json::Deserializer::from_reader(reader).into_iter::<Value>();
    loop {
        used.set(0);
        let (response, close) = match requests.next() {
            None => return,
            Some(Ok(request)) => (handle_request(request, shared), false),
            Some(Err(e)) if e.is_io() => {
                if used.get() >= shared.options.max_request_bytes {
                    let err = RpcError::invalid_request(format!(
                        "request larger than {} bytes",
                        shared.options.max_request_bytes
                    ));
                    (Some(error_response(Value::Null, err)), true)
                } else {
                    tracing::debug!(error = %e, "RPC connection read failed");
                    return;
                }
            }
            // The peer closed the connection in the middle of a request.
            Some(Err(e)) if e.is_eof() => return,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "RPC parse error; closing connection");
                (
                    Some(error_response(Value::Null, RpcError::parse_error(e))),
                    true,
                )
            }
        };
        if let Some(response) = response {
            if let Err(e) = writer.write_all(&encode(&response)) {
                tracing::debug!(error = %e, "RPC connection write failed");
                return;
            }
        }
        if close {
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// Validates one request and runs it; `None` for a notification.
fn handle_request(request: Value, shared: &Shared) -> Option<Value> {
    let mut obj = match request {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Some(error_response(
                Value::Null,
                RpcError::invalid_request("batch requests (arrays) are not supported"),
            ))
        }
        _ => {
            return Some(error_response(
                Value::Null,
                RpcError::invalid_request("a request must be a JSON object"),
            ))
        }
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return Some(error_response(
                Value::Null,
                RpcError::invalid_request("\"id\" must be a string, a number or null"),
            ))
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |detail: &str| {
        Some(error_response(
            reply_id.clone(),
            RpcError::invalid_request(detail),
        ))
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid("\"jsonrpc\" must be \"2.0\"");
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return invalid("\"method\" must be a string"),
        None => return invalid("\"method\" is missing"),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return invalid("\"params\" must be an object or an array"),
    };
    tracing::debug!(%method, "RPC request");
    let result = dispatch(&method, params, shared);
    if let Err(e) = &result {
        tracing::info!(%method, code = e.code, message = %e.message, "RPC failed");
    }
    let id = id?;
    Some(match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(err) => error_response(id, err),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethodsParams {
    /// Accepted for SPDK compatibility; every method is callable at any time.
    #[serde(default)]
    #[allow(dead_code)]
    current: bool,
}

fn dispatch(method: &str, params: Option<Value>, shared: &Shared) -> Result<Value, RpcError> {
    match (method, &shared.options.events) {
        (RPC_GET_METHODS, _) => {
            let _: GetMethodsParams = parse_params(params)?;
            Ok(json!(method_list(shared)))
        }
        (VMPATH_GET_EVENTS, Some(bus)) => bus.rpc_get_events(params),
        _ => {
            let handler = &shared.handler;
            match catch_unwind(AssertUnwindSafe(|| handler.call(method, params))) {
                Ok(result) => result,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(%method, panic = %what, "RPC handler panicked");
                    Err(RpcError::internal(format!(
                        "handler of {method:?} failed: {what}"
                    )))
                }
            }
        }
    }
}

fn method_list(shared: &Shared) -> Vec<String> {
    let mut methods = shared.handler.methods();
    methods.push(RPC_GET_METHODS.to_owned());
    if shared.options.events.is_some() {
        methods.push(VMPATH_GET_EVENTS.to_owned());
    }
    methods.sort();
    methods.dedup();
    methods
}

fn error_response(id: Value, err: RpcError) -> Value {
    let mut obj = Map::new();
    obj.insert("jsonrpc".into(), json!("2.0"));
    obj.insert("id".into(), id);
    obj.insert(
        "error".into(),
        serde_json::to_value(err).unwrap_or(Value::Null),
    );
    Value::Object(obj)
}

fn encode(response: &Value) -> Vec<u8> {
    let mut bytes = response.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}
