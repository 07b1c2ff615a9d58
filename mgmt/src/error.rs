//! JSON-RPC error objects ([`RpcError`]), the error codes used by vmpath, and
//! [`parse_params`], which turns serde errors into `-32602 Invalid params` naming the field.
//!
//! Codes: JSON-RPC 2.0 section 5.1 (`-32700`, `-32600` to `-32603`); application errors
//! use negative errno values like SPDK (`-19` ENODEV, `-17` EEXIST, ...).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// JSON-RPC and application error codes.
pub mod codes {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i32 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i32 = -32600;
    /// The method does not exist.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// `-EIO`: an I/O error (e.g. a backend file could not be opened).
    pub const EIO: i32 = -5;
    /// `-ENOMEM`: out of memory.
    pub const ENOMEM: i32 = -12;
    /// `-EBUSY`: the object is in use.
    pub const EBUSY: i32 = -16;
    /// `-EEXIST`: an object with that name already exists.
    pub const EEXIST: i32 = -17;
    /// `-ENODEV`: no such object (SPDK's "No such device").
    pub const ENODEV: i32 = -19;
    /// `-EINVAL`: invalid argument (semantic, after params were parsed).
    pub const EINVAL: i32 = -22;
}

/// A JSON-RPC error object: `{"code": -19, "message": "...", "data": ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (JSON-RPC error {code})")]
pub struct RpcError {
    /// Error code (see [`codes`]).
    pub code: i32,
    /// Human-readable message.
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with any code.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The same error with `data` attached.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `-32700`: the bytes received are not JSON.
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::PARSE_ERROR, format!("Parse error: {detail}"))
    }

    /// `-32600`: the JSON is not a valid request.
    pub fn invalid_request(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INVALID_REQUEST, format!("Invalid request: {detail}"))
    }

    /// `-32601`: no method of that name; the message names it.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {method:?} (rpc_get_methods lists the methods)"),
        )
    }

    /// `-32602`: bad params; `detail` says which param and what is wrong.
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        Self::new(
            codes::INVALID_PARAMS,
            format!("Invalid parameters: {detail}"),
        )
    }

    /// `-32603`: the server failed for a reason not caused by the request.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INTERNAL_ERROR, format!("Internal error: {detail}"))
    }

    /// `-19` (ENODEV): the named object does not exist.
    pub fn no_device(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::ENODEV, format!("No such device: {detail}"))
    }

    /// `-17` (EEXIST): an object with that name already exists.
    pub fn exists(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::EEXIST, format!("File exists: {detail}"))
    }

    /// `-16` (EBUSY): the object is in use.
    pub fn busy(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::EBUSY, format!("Device or resource busy: {detail}"))
    }

    /// `-22` (EINVAL): the params parse but their values are not acceptable.
    pub fn invalid_argument(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::EINVAL, format!("Invalid argument: {detail}"))
    }

    /// `-5` (EIO): an I/O error, e.g. a backend file that cannot be opened.
    pub fn io(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::EIO, format!("Input/output error: {detail}"))
    }
}

/// Deserializes RPC params into `T`; absent or `null` params are read as `{}`.
///
/// A serde failure becomes `-32602 Invalid parameters: <param path>: <what is wrong>`,
/// e.g. `Invalid parameters: block_size: invalid type: string "x", expected u32`, or
/// `Invalid parameters: missing field `name``.
pub fn parse_params<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let value = match params {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v) => v,
    };
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            RpcError::invalid_params(inner)
        } else {
            RpcError::invalid_params(format!("{path}: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct P {
        name: String,
        #[serde(default)]
        size: u32,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        depth: u8,
    }

    #[test]
    fn parse_params_names_the_field() {
        let p: P = parse_params(Some(json!({"name": "a", "size": 3}))).unwrap();
        assert_eq!(p.size, 3);

        let e = parse_params::<P>(Some(json!({"name": "a", "size": "big"}))).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(
            e.message
                .starts_with("Invalid parameters: size: invalid type"),
            "{e}"
        );

        let e = parse_params::<P>(None).unwrap_err();
        assert_eq!(e.message, "Invalid parameters: missing field `name`");

        let e = parse_params::<P>(Some(json!({"name": "a", "sise": 1}))).unwrap_err();
        assert!(e.message.contains("sise: unknown field `sise`"), "{e}");

        let e = parse_params::<P>(Some(json!({"name": "a", "inner": {"depth": 300}}))).unwrap_err();
        assert!(e.message.contains("inner.depth: invalid value"), "{e}");
    }

    #[test]
    fn error_object_shape() {
        let e = RpcError::no_device("bdev Malloc9").with_data(json!({"name": "Malloc9"}));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"code": -19, "message": "No such device: bdev Malloc9", "data": {"name": "Malloc9"}})
        );
        let v = serde_json::to_value(RpcError::exists("bdev M")).unwrap();
        assert_eq!(v, json!({"code": -17, "message": "File exists: bdev M"}));
        assert!(RpcError::method_not_found("foo")
            .message
            .contains("\"foo\""));
    }
}
