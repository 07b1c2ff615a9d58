//! A blocking JSON-RPC 2.0 client for the daemon's Unix socket (used by `vmpathctl` and
//! by tests).

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::RpcError;

/// Largest response accepted, in bytes (256 MiB).
pub const MAX_RESPONSE_BYTES: u64 = 256 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the file is missing or nobody accepts on it.
    #[error("cannot connect to vmpathd at {}: {reason} (is vmpathd running? start it with 'vmpathd' or pass -r/--rpc-socket)", path.display())]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// `no such file` or `connection refused`.
        reason: &'static str,
    },
    /// Connecting failed for another reason (e.g. permission denied).
    #[error("cannot connect to vmpathd at {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Sending the request or receiving the response failed.
    #[error("I/O error talking to vmpathd at {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// No response within the timeout.
    #[error("vmpathd at {} did not answer within {:.1} s", path.display(), after.as_secs_f64())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// The response is not a valid JSON-RPC 2.0 response to the request.
    #[error("bad response from vmpathd: {0}")]
    Protocol(String),
    /// The daemon answered with an error object.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl ClientError {
    /// The RPC error, when the daemon answered with one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc(e) => Some(e),
            _ => None,
        }
    }
}

/// A connection to the daemon. Calls are sequential: one request, then its response.
pub struct RpcClient {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Deserialize)]
struct Response {
    jsonrpc: String,
    id: Value,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<RpcError>,
}

impl RpcClient {
    /// Connects to the daemon's socket.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_owned();
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                let reason = match e.kind() {
                    io::ErrorKind::NotFound => Some("no such file"),
                    io::ErrorKind::ConnectionRefused => Some("connection refused"),
                    _ => None,
                };
                return Err(match reason {
                    Some(reason) => ClientError::NotRunning { path, reason },
                    None => ClientError::Connect { path, source: e },
                });
            }
        };
        let reader = stream.try_clone().map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        Ok(RpcClient {
            path,
            writer: stream,
            reader: BufReader::new(reader),
            next_id: 1,
            timeout: None,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets how long a call may wait for its response (`None` = forever, the default).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.writer
            .set_read_timeout(timeout)
            .and_then(|()| self.writer.set_write_timeout(timeout))
            .map_err(|source| self.io_error(source))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Calls `method` with `params` and returns its result.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(params) = params {
            request["params"] = params;
        }
        let mut bytes = request.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|e| self.io_error(e))?;
        let value = self.read_response()?;
        let response: Response = serde_json::from_value(value)
            .map_err(|e| ClientError::Protocol(format!("not a JSON-RPC response: {e}")))?;
        if response.jsonrpc != "2.0" {
            return Err(ClientError::Protocol(format!(
                "\"jsonrpc\" is {:?}, expected \"2.0\"",
                response.jsonrpc
            )));
        }
        if let Some(error) = response.error {
            // An error the server could not tie to a request (id null) is still reported.
            return Err(ClientError::Rpc(error));
        }
        if response.id != json!(id) {
            return Err(ClientError::Protocol(format!(
                "response id {} does not match request id {id}",
                response.id
            )));
        }
        response
            .result
            .ok_or_else(|| ClientError::Protocol("response has neither result nor error".into()))
    }

    fn read_response(&mut self) -> Result<Value, ClientError> {
        let limited = (&mut self.reader).take(MAX_RESPONSE_BYTES);
        let mut de = serde_json::Deserializer::from_reader(limited);
        match Value::deserialize(&mut de) {
            Ok(v) => Ok(v),
            Err(e) if e.is_eof() => Err(ClientError::Protocol(
                "vmpathd closed the connection without answering".into(),
            )),
            Err(e) if e.is_io() => {
                let source = io::Error::from(e);
                Err(match (source.kind(), self.timeout) {
                    (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(after)) => {
                        ClientError::Timeout {
                            path: self.path.clone(),
                            after,
                        }
                    }
                    _ => self.io_error(source),
                })
            }
            Err(e) => Err(ClientError::Protocol(format!("invalid JSON: {e}"))),
        }
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }
}
