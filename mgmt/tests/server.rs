//! The JSON-RPC server and client over a real Unix socket, with a test handler.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use vmpath_mgmt::{
    codes, parse_params, ClientError, EventBus, RpcClient, RpcError, RpcHandler, RpcServer,
    ServerError, ServerOptions,
};

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmpath-mgmt-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("rpc.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct TestHandler {
    calls: AtomicUsize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddParams {
    a: i64,
    b: i64,
}

impl RpcHandler for TestHandler {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match method {
            "echo" => Ok(params.unwrap_or(Value::Null)),
            "add" => {
                let p: AddParams = parse_params(params)?;
                Ok(json!(p.a + p.b))
            }
            "get_thing" => Err(RpcError::no_device("thing Foo")),
            "create_thing" => Err(RpcError::exists("thing Foo")),
            "explode" => panic!("boom"),
            "broken" => Err(RpcError::internal("backend is gone")),
            _ => Err(RpcError::method_not_found(method)),
        }
    }

    fn methods(&self) -> Vec<String> {
        [
            "echo",
            "add",
            "get_thing",
            "create_thing",
            "explode",
            "broken",
        ]
        .map(String::from)
        .to_vec()
    }
}

fn handler() -> Arc<TestHandler> {
    Arc::new(TestHandler {
        calls: AtomicUsize::new(0),
    })
}

fn start(dir: &TempDir) -> RpcServer {
    RpcServer::bind(dir.sock(), handler()).unwrap()
}

/// A raw connection: send bytes, read newline-terminated responses.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        assert!(n > 0, "connection closed");
        assert!(
            line.ends_with('\n'),
            "response not newline-terminated: {line:?}"
        );
        serde_json::from_str(&line).unwrap()
    }

    fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

fn call(path: &Path, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
    let mut client = RpcClient::connect(path)?;
    client.set_timeout(Some(Duration::from_secs(20)))?;
    client.call(method, params)
}

fn rpc_err(r: Result<Value, ClientError>) -> RpcError {
    match r {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

#[test]
fn result_and_app_errors() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let sock = dir.sock();
    assert_eq!(
        call(&sock, "add", Some(json!({"a": 2, "b": 40}))).unwrap(),
        json!(42)
    );
    assert_eq!(
        call(&sock, "echo", Some(json!([1, "x"]))).unwrap(),
        json!([1, "x"])
    );
    let e = rpc_err(call(&sock, "get_thing", None));
    assert_eq!(e.code, codes::ENODEV);
    assert_eq!(e.code, -19);
    assert_eq!(e.message, "No such device: thing Foo");
    let e = rpc_err(call(&sock, "create_thing", None));
    assert_eq!(e.code, -17);
    let e = rpc_err(call(&sock, "broken", None));
    assert_eq!(e.code, codes::INTERNAL_ERROR);
    assert!(e.message.contains("backend is gone"), "{e}");
}

#[test]
fn method_not_found_and_invalid_params() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let sock = dir.sock();
    let e = rpc_err(call(&sock, "bdev_frobnicate", None));
    assert_eq!(e.code, -32601);
    assert!(e.message.contains("bdev_frobnicate"), "{e}");

    let e = rpc_err(call(&sock, "add", Some(json!({"a": 1}))));
    assert_eq!(e.code, -32602);
    assert!(e.message.contains("missing field `b`"), "{e}");
    let e = rpc_err(call(&sock, "add", Some(json!({"a": 1, "b": "two"}))));
    assert_eq!(e.code, -32602);
    assert!(e.message.contains("b: invalid type: string"), "{e}");
    let e = rpc_err(call(&sock, "add", Some(json!({"a": 1, "b": 2, "c": 3}))));
    assert!(e.message.contains("unknown field `c`"), "{e}");
}

#[test]
fn handler_panic_is_internal_error_and_server_keeps_serving() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let sock = dir.sock();
    let mut raw = Raw::connect(&sock);
    raw.send(r#"{"jsonrpc":"2.0","method":"explode","id":1}"#);
    let r = raw.recv();
    assert_eq!(r["id"], 1);
    assert_eq!(r["error"]["code"], -32603);
    assert!(r["error"]["message"].as_str().unwrap().contains("boom"));
    // Same connection, then a new one: both still served.
    raw.send(r#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":1},"id":2}"#);
    assert_eq!(raw.recv()["result"], 2);
    assert_eq!(
        call(&sock, "add", Some(json!({"a": 3, "b": 4}))).unwrap(),
        json!(7)
    );
}

#[test]
fn invalid_requests() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    let cases = [
        (
            r#"[{"jsonrpc":"2.0","method":"echo","id":1}]"#,
            Value::Null,
            "batch",
        ),
        (r#""hello""#, Value::Null, "JSON object"),
        (r#"{"method":"echo","id":5}"#, json!(5), "jsonrpc"),
        (
            r#"{"jsonrpc":"1.0","method":"echo","id":6}"#,
            json!(6),
            "jsonrpc",
        ),
        (r#"{"jsonrpc":"2.0","id":7}"#, json!(7), "method"),
        (r#"{"jsonrpc":"2.0","method":3,"id":8}"#, json!(8), "method"),
        (
            r#"{"jsonrpc":"2.0","method":"echo","params":5,"id":9}"#,
            json!(9),
            "params",
        ),
        (
            r#"{"jsonrpc":"2.0","method":"echo","id":{"x":1}}"#,
            Value::Null,
            "id",
        ),
    ];
    for (request, id, what) in cases {
        raw.send(request);
        let r = raw.recv();
        assert_eq!(r["jsonrpc"], "2.0");
        assert_eq!(r["id"], id, "{request}");
        assert_eq!(r["error"]["code"], -32600, "{request}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(what), "{request}: {msg}");
    }
    // The connection is still usable after -32600 errors.
    raw.send(r#"{"jsonrpc":"2.0","method":"echo","params":{"k":"v"},"id":"s1"}"#);
    let r = raw.recv();
    assert_eq!(r["id"], "s1");
    assert_eq!(r["result"], json!({"k": "v"}));
}

#[test]
fn back_to_back_requests_without_newlines() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    // One write with three requests and no separators, as SPDK's rpc.py may send them.
    raw.send(concat!(
        r#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":1}"#,
        r#"{"jsonrpc":"2.0","method":"add","params":{"a":3,"b":4},"id":2}"#,
        r#"{"jsonrpc":"2.0","method":"echo","params":["x"],"id":3}"#,
    ));
    assert_eq!(raw.recv(), json!({"jsonrpc": "2.0", "id": 1, "result": 3}));
    assert_eq!(raw.recv(), json!({"jsonrpc": "2.0", "id": 2, "result": 7}));
    assert_eq!(
        raw.recv(),
        json!({"jsonrpc": "2.0", "id": 3, "result": ["x"]})
    );
    // A request split over several writes.
    raw.send(r#"{"jsonrpc":"2.0","meth"#);
    std::thread::sleep(Duration::from_millis(20));
    raw.send(r#"od":"add","params":{"a":10,"b":5},"id":4}"#);
    raw.send("\n\n");
    assert_eq!(raw.recv()["result"], 15);
}

#[test]
fn notification_gets_no_response() {
    let dir = TempDir::new();
    let h = handler();
    let _server = RpcServer::bind(dir.sock(), h.clone()).unwrap();
    let mut raw = Raw::connect(&dir.sock());
    raw.send(r#"{"jsonrpc":"2.0","method":"echo","params":[1]}"#);
    raw.send(r#"{"jsonrpc":"2.0","method":"echo","params":[2],"id":2}"#);
    let r = raw.recv();
    assert_eq!(r["id"], 2);
    assert_eq!(r["result"], json!([2]));
    assert_eq!(
        h.calls.load(Ordering::SeqCst),
        2,
        "the notification ran too"
    );
}

#[test]
fn parse_error_closes_only_that_connection() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let sock = dir.sock();
    let mut other = Raw::connect(&sock);
    let mut raw = Raw::connect(&sock);
    raw.send("{\"jsonrpc\": \"2.0\", \"method\": oops}\n");
    let r = raw.recv();
    assert_eq!(r["id"], Value::Null);
    assert_eq!(r["error"]["code"], -32700);
    assert!(raw.is_closed());
    // Another open connection and a new one are still served.
    other.send(r#"{"jsonrpc":"2.0","method":"add","params":{"a":2,"b":2},"id":1}"#);
    assert_eq!(other.recv()["result"], 4);
    assert_eq!(
        call(&sock, "add", Some(json!({"a": 1, "b": 2}))).unwrap(),
        json!(3)
    );
    // Non-UTF-8 garbage too.
    let mut raw = Raw::connect(&sock);
    raw.stream.write_all(&[0xff, 0xfe, b'{', b'\n']).unwrap();
    assert_eq!(raw.recv()["error"]["code"], -32700);
    assert!(raw.is_closed());
}

#[test]
fn request_size_is_bounded() {
    let dir = TempDir::new();
    let options = ServerOptions {
        max_request_bytes: 1024,
        ..ServerOptions::default()
    };
    let _server = RpcServer::bind_with(dir.sock(), handler(), options).unwrap();
    let mut raw = Raw::connect(&dir.sock());
    let small = format!(
        r#"{{"jsonrpc":"2.0","method":"echo","params":["{}"],"id":1}}"#,
        "a".repeat(500)
    );
    raw.send(&small);
    assert_eq!(raw.recv()["id"], 1);
    // Every request gets its own budget.
    raw.send(&small);
    assert_eq!(raw.recv()["id"], 1);
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"echo","params":["{}"],"id":2}}"#,
        "a".repeat(4000)
    );
    // The server may close before reading everything; ignore a failed write.
    let _ = raw.stream.write_all(big.as_bytes());
    let r = raw.recv();
    assert_eq!(r["error"]["code"], -32600);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1024 bytes"));
    assert!(raw.is_closed());
    assert_eq!(
        call(&dir.sock(), "echo", Some(json!([1]))).unwrap(),
        json!([1])
    );
}

#[test]
fn connections_are_bounded() {
    let dir = TempDir::new();
    let options = ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    };
    let server = RpcServer::bind_with(dir.sock(), handler(), options).unwrap();
    let mut a = Raw::connect(&dir.sock());
    let mut b = Raw::connect(&dir.sock());
    // Make sure both are registered before the third arrives.
    a.send(r#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#);
    b.send(r#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#);
    a.recv();
    b.recv();
    assert_eq!(server.connection_count(), 2);
    let mut c = Raw::connect(&dir.sock());
    let r = c.recv();
    assert_eq!(r["error"]["code"], -32603);
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too many connections"));
    assert!(c.is_closed());
    // Closing one makes room again.
    drop(a);
    let mut tries = 0;
    while server.connection_count() > 1 {
        tries += 1;
        assert!(tries < 2000, "connection not released");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        call(&dir.sock(), "echo", Some(json!([2]))).unwrap(),
        json!([2])
    );
}

#[test]
fn rpc_get_methods_is_built_in() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let methods = call(&dir.sock(), "rpc_get_methods", None).unwrap();
    let expected = [
        "add",
        "broken",
        "create_thing",
        "echo",
        "explode",
        "get_thing",
        "rpc_get_methods",
    ];
    assert_eq!(methods, json!(expected));
    // SPDK's rpc.py may send {"current": true}.
    let methods = call(
        &dir.sock(),
        "rpc_get_methods",
        Some(json!({"current": true})),
    )
    .unwrap();
    assert_eq!(methods, json!(expected));
    let e = rpc_err(call(
        &dir.sock(),
        "rpc_get_methods",
        Some(json!({"bogus": 1})),
    ));
    assert_eq!(e.code, -32602);
    // Without an event bus, vmpath_get_events goes to the handler (which does not know it).
    assert_eq!(
        rpc_err(call(&dir.sock(), "vmpath_get_events", None)).code,
        -32601
    );
}

#[test]
fn events_over_rpc() {
    let dir = TempDir::new();
    let bus = Arc::new(EventBus::new(4));
    let options = ServerOptions {
        events: Some(Arc::clone(&bus)),
        ..ServerOptions::default()
    };
    let _server = RpcServer::bind_with(dir.sock(), handler(), options).unwrap();
    let methods = call(&dir.sock(), "rpc_get_methods", None).unwrap();
    assert!(methods
        .as_array()
        .unwrap()
        .contains(&json!("vmpath_get_events")));

    for i in 0..6 {
        bus.publish("bdev_created", json!({"name": format!("M{i}")}));
    }
    let r = call(&dir.sock(), "vmpath_get_events", Some(json!({"since": 0}))).unwrap();
    let names: Vec<&str> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["M2", "M3", "M4", "M5"]);
    assert_eq!(r["lost"], 2);
    assert_eq!(r["next_seq"], 7);
    assert_eq!(r["events"][0]["seq"], 3);
    assert_eq!(r["events"][0]["type"], "bdev_created");

    // A long poll wakes when an event is published.
    let publisher = {
        let bus = Arc::clone(&bus);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            bus.publish("path_failed", json!({"path": 1}));
        })
    };
    let r = call(
        &dir.sock(),
        "vmpath_get_events",
        Some(json!({"since": 7, "wait_ms": 20000})),
    )
    .unwrap();
    publisher.join().unwrap();
    assert_eq!(r["events"][0]["type"], "path_failed");
    assert_eq!(r["next_seq"], 8);
}

#[test]
fn socket_mode_is_0600_and_removed_on_shutdown() {
    let dir = TempDir::new();
    let server = start(&dir);
    let mode = std::fs::metadata(dir.sock()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(server.socket_path(), dir.sock());
    server.shutdown();
    assert!(!dir.sock().exists());
    match RpcClient::connect(dir.sock()) {
        Err(ClientError::NotRunning { reason, .. }) => assert_eq!(reason, "no such file"),
        other => panic!("expected NotRunning, got {other:?}"),
    }
}

#[test]
fn shutdown_closes_idle_connections() {
    let dir = TempDir::new();
    let server = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    raw.send(r#"{"jsonrpc":"2.0","method":"echo","params":[1],"id":1}"#);
    raw.recv();
    server.shutdown();
    assert!(raw.is_closed());
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    // A socket file left behind by a dead daemon: bound, then the listener closed.
    drop(UnixListener::bind(dir.sock()).unwrap());
    assert!(dir.sock().exists());
    match RpcClient::connect(dir.sock()) {
        Err(e @ ClientError::NotRunning { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("connection refused"), "{msg}");
            assert!(msg.contains("is vmpathd running?"), "{msg}");
        }
        other => panic!("expected NotRunning, got {other:?}"),
    }
    let _server = start(&dir);
    assert_eq!(
        call(&dir.sock(), "echo", Some(json!([9]))).unwrap(),
        json!([9])
    );
}

#[test]
fn live_daemon_is_not_replaced() {
    let dir = TempDir::new();
    let _first = start(&dir);
    match RpcServer::bind(dir.sock(), handler()) {
        Err(e @ ServerError::AlreadyRunning { .. }) => {
            assert!(e.to_string().contains("already listening"), "{e}");
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    // The first server still answers.
    assert_eq!(
        call(&dir.sock(), "echo", Some(json!([1]))).unwrap(),
        json!([1])
    );
}

#[test]
fn regular_file_is_never_removed() {
    let dir = TempDir::new();
    std::fs::write(dir.sock(), b"precious").unwrap();
    assert!(matches!(
        RpcServer::bind(dir.sock(), handler()),
        Err(ServerError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(dir.sock()).unwrap(), b"precious");
}

#[test]
fn bind_in_missing_directory_fails_clearly() {
    let dir = TempDir::new();
    let path = dir.0.join("no/such/dir/rpc.sock");
    let e = RpcServer::bind(&path, handler()).unwrap_err();
    assert!(matches!(e, ServerError::Io { action: "bind", .. }), "{e}");
    assert!(e.to_string().contains("no/such/dir/rpc.sock"), "{e}");
}

#[test]
fn client_reports_missing_daemon() {
    let e = RpcClient::connect("/nonexistent-dir/vmpath.sock").unwrap_err();
    let msg = e.to_string();
    assert_eq!(
        msg,
        "cannot connect to vmpathd at /nonexistent-dir/vmpath.sock: no such file \
         (is vmpathd running? start it with 'vmpathd' or pass -r/--rpc-socket)"
    );
}

#[test]
fn client_times_out_and_detects_closed_connection() {
    let dir = TempDir::new();
    let listener = UnixListener::bind(dir.sock()).unwrap();
    let server = std::thread::spawn(move || {
        // Accept two connections: ignore the first request, close the second.
        let (mut first, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = first.read(&mut buf);
        let (second, _) = listener.accept().unwrap();
        drop(second);
        // Keep the first open until the client gave up.
        let _ = first.read(&mut buf);
    });
    let mut client = RpcClient::connect(dir.sock()).unwrap();
    client
        .set_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(matches!(
        client.call("echo", None),
        Err(ClientError::Timeout { .. })
    ));
    let mut second = RpcClient::connect(dir.sock()).unwrap();
    second.set_timeout(Some(Duration::from_secs(20))).unwrap();
    match second.call("echo", None) {
        Err(ClientError::Protocol(m)) => assert!(m.contains("closed"), "{m}"),
        // The peer may reset the connection before we wrote.
        Err(ClientError::Io { .. }) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }
    drop(client);
    server.join().unwrap();
}

#[test]
fn client_sequential_calls_on_one_connection() {
    let dir = TempDir::new();
    let _server = start(&dir);
    let mut client = RpcClient::connect(dir.sock()).unwrap();
    for i in 0..50 {
        let r = client.call("add", Some(json!({"a": i, "b": 1}))).unwrap();
        assert_eq!(r, json!(i + 1));
    }
}
