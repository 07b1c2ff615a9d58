//! Management plane of vmpathd: JSON-RPC 2.0 over a Unix stream socket, SPDK style.
//!
//! - [`RpcServer`] serves an [`RpcHandler`] on a socket (mode 0600; a stale socket file is
//!   replaced, a live daemon on it is refused). Requests are JSON objects, newline-terminated
//!   or sent back to back (as SPDK's `scripts/rpc.py` does); responses are one object plus
//!   `"\n"`. `rpc_get_methods` is built in; so is `vmpath_get_events` when an [`EventBus`]
//!   is attached ([`ServerOptions::events`]).
//! - [`RpcClient`] is the blocking client used by `vmpathctl`; [`ClientError`] tells a daemon
//!   that is not running apart from I/O failures and RPC errors.
//! - [`RpcError`] carries JSON-RPC codes (`-32700` parse error, `-32600` invalid request,
//!   `-32601` method not found, `-32602` invalid params, `-32603` internal) and SPDK-style
//!   negative errno codes (`-19` ENODEV, `-17` EEXIST, ...); [`parse_params`] turns serde
//!   errors into `-32602` messages that name the param.
//!
//! References: JSON-RPC 2.0 specification (<https://www.jsonrpc.org/specification>),
//! sections 4 (request), 4.1 (notification), 5 (response), 5.1 (error codes), 6 (batch);
//! SPDK `doc/jsonrpc.md` and `lib/jsonrpc` for framing and method naming.

pub mod client;
pub mod error;
pub mod events;
pub mod server;

pub use client::{ClientError, RpcClient};
pub use error::{codes, parse_params, RpcError};
pub use events::{Event, EventBatch, EventBus};
pub use server::{
    RpcHandler, RpcServer, ServerError, ServerOptions, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_BYTES, RPC_GET_METHODS, VMPATH_GET_EVENTS,
};
