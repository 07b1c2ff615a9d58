//! NVMe-over-TCP target RPCs (SPDK's names and parameters, so operators' `rpc.py` habits
//! carry over). Every change is mirrored in `State.config` (`[[nvmf_subsystem]]`), so
//! `save_config` rebuilds the same subsystems.
//!
//! | method | params | result |
//! |---|---|---|
//! | `nvmf_create_subsystem` | `nqn`, `serial_number`?, `model_number`?, `allow_any_host`?, `ana_reporting`? | `true` |
//! | `nvmf_delete_subsystem` | `nqn` | `true` |
//! | `nvmf_subsystem_add_ns` | `nqn`, `namespace`: {`bdev_name`, `nsid`?, `anagrpid`?} | NSID |
//! | `nvmf_subsystem_remove_ns` | `nqn`, `nsid` | `true` |
//! | `nvmf_subsystem_add_listener` | `nqn`, `listen_address`: {`trtype`, `adrfam`?, `traddr`, `trsvcid`}, `ana_state`? | `true` |
//! | `nvmf_subsystem_remove_listener` | `nqn`, `listen_address` | `true` |
//! | `nvmf_subsystem_listener_set_ana_state` | `nqn`, `listen_address`, `ana_state`, `anagrpid`? | `true` |
//! | `nvmf_subsystem_add_host` | `nqn`, `host` | `true` |
//! | `nvmf_subsystem_remove_host` | `nqn`, `host` | `true` |
//! | `nvmf_subsystem_allow_any_host` | `nqn`, `allow_any_host` | `true` |
//! | `nvmf_get_subsystems` | `nqn`? | array of subsystems (SPDK's layout, discovery first) |
//!
//! A listener with `trsvcid` `"0"` gets a free port from the kernel; the real port is what
//! `nvmf_get_subsystems` and `save_config` show.

use std::sync::Arc;
use std::time::Duration;

use nvmf_target::{
    ana_state_name, parse_ana_state, ListenAddr, NamespaceParams, SubsystemError, SubsystemParams,
    Target, TargetError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use vmpath_config::nvmf::{NvmfListenerConfig, NvmfNamespaceConfig, NvmfSubsystemConfig};
use vmpath_mgmt::{parse_params, RpcError};

use crate::daemon::State;

/// The methods served here.
pub const METHODS: &[&str] = &[
    "nvmf_create_subsystem",
    "nvmf_delete_subsystem",
    "nvmf_subsystem_add_ns",
    "nvmf_subsystem_remove_ns",
    "nvmf_subsystem_add_listener",
    "nvmf_subsystem_remove_listener",
    "nvmf_subsystem_listener_set_ana_state",
    "nvmf_subsystem_add_host",
    "nvmf_subsystem_remove_host",
    "nvmf_subsystem_allow_any_host",
    "nvmf_get_subsystems",
];

/// How long daemon shutdown waits for NVMe/TCP connections to finish their in-flight I/O.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateParams {
    nqn: String,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    model_number: Option<String>,
    #[serde(default)]
    allow_any_host: bool,
    /// Accepted for SPDK compatibility; ANA reporting is always on.
    #[serde(default)]
    #[allow(dead_code)]
    ana_reporting: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NqnParam {
    nqn: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptNqnParam {
    #[serde(default)]
    nqn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddNsParams {
    nqn: String,
    namespace: NvmfNamespaceConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveNsParams {
    nqn: String,
    nsid: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerParams {
    nqn: String,
    listen_address: Address,
    #[serde(default)]
    ana_state: Option<String>,
    #[serde(default)]
    anagrpid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Address {
    #[serde(default = "tcp")]
    trtype: String,
    #[serde(default)]
    adrfam: Option<String>,
    traddr: String,
    trsvcid: String,
}

fn tcp() -> String {
    "tcp".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostParams {
    nqn: String,
    host: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowAnyParams {
    nqn: String,
    allow_any_host: bool,
}

/// Maps a target error to the JSON-RPC error an SPDK user expects.
fn rpc_err(e: TargetError) -> RpcError {
    match &e {
        TargetError::NoSuchSubsystem(_) => RpcError::no_device(e.to_string()),
        TargetError::SubsystemExists(_) => RpcError::exists(e.to_string()),
        TargetError::Subsystem(s) => match s {
            SubsystemError::Invalid { .. } | SubsystemError::NoFreeNsid(_) => {
                RpcError::invalid_params(e.to_string())
            }
            SubsystemError::NsidInUse { .. }
            | SubsystemError::ListenerExists { .. }
            | SubsystemError::HostExists { .. } => RpcError::exists(e.to_string()),
            SubsystemError::NoSuchNamespace { .. }
            | SubsystemError::NoSuchListener { .. }
            | SubsystemError::NoSuchHost { .. } => RpcError::no_device(e.to_string()),
        },
        TargetError::Listen { .. } => RpcError::io(e.to_string()),
        TargetError::Stopped => RpcError::busy(e.to_string()),
        _ => RpcError::internal(e.to_string()),
    }
}

fn invalid(e: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(e)
}

impl Address {
    fn listener(&self, ana_state: Option<&str>) -> Result<NvmfListenerConfig, RpcError> {
        let l = NvmfListenerConfig {
            trtype: self.trtype.to_ascii_lowercase(),
            adrfam: self.adrfam.as_ref().map(|a| a.to_ascii_lowercase()),
            traddr: self.traddr.clone(),
            trsvcid: self.trsvcid.clone(),
            ana_state: ana_state.unwrap_or("optimized").to_string(),
        };
        l.validate().map_err(invalid)?;
        Ok(l)
    }
}

fn with_sub<T>(
    state: &State,
    nqn: &str,
    f: impl FnOnce(&mut NvmfSubsystemConfig) -> T,
) -> Option<T> {
    let mut cfg = state.config.lock().expect("config lock");
    cfg.nvmf_subsystems.iter_mut().find(|s| s.nqn == nqn).map(f)
}

fn create_subsystem(state: &State, c: &NvmfSubsystemConfig) -> Result<(), RpcError> {
    c.validate_own().map_err(invalid)?;
    state
        .nvmf
        .create_subsystem(SubsystemParams {
            nqn: c.nqn.clone(),
            serial: c.serial_number.clone(),
            model: c.model_number.clone(),
            allow_any_host: c.allow_any_host,
            hosts: c.hosts.clone(),
        })
        .map_err(rpc_err)?;
    Ok(())
}

fn add_ns(state: &State, nqn: &str, ns: &NvmfNamespaceConfig) -> Result<u32, RpcError> {
    ns.validate().map_err(invalid)?;
    let bdev = state
        .bdevs
        .get(&ns.bdev_name)
        .map_err(|e| RpcError::no_device(e.to_string()))?;
    state
        .nvmf
        .add_namespace(
            nqn,
            NamespaceParams {
                bdev,
                nsid: ns.nsid,
                anagrpid: ns.anagrpid,
            },
        )
        .map_err(rpc_err)
}

/// Adds a listener; returns the config entry with the port actually bound.
fn add_listener(
    state: &State,
    nqn: &str,
    l: &NvmfListenerConfig,
) -> Result<NvmfListenerConfig, RpcError> {
    l.validate().map_err(invalid)?;
    let ana = parse_ana_state(&l.ana_state).map_err(invalid)?;
    let real = state
        .nvmf
        .add_listener(nqn, &ListenAddr::new(&l.traddr, &l.trsvcid), ana)
        .map_err(rpc_err)?;
    let mut out = l.clone();
    out.trsvcid = real.trsvcid;
    Ok(out)
}

/// Creates the target's subsystems from the config (daemon start). A portal that cannot
/// be opened is an error. Listeners configured with port 0 get their real port written
/// back into `State.config`.
pub fn start_configured(state: &State) -> Result<(), String> {
    let subs = state
        .config
        .lock()
        .expect("config lock")
        .nvmf_subsystems
        .clone();
    for (i, s) in subs.iter().enumerate() {
        let at = |what: &str, e: RpcError| {
            format!("nvmf_subsystem[{i}] ({}): {what}: {}", s.nqn, e.message)
        };
        create_subsystem(state, s).map_err(|e| at("create", e))?;
        for ns in &s.namespaces {
            let nsid = add_ns(state, &s.nqn, ns).map_err(|e| at("namespace", e))?;
            tracing::info!(nqn = %s.nqn, nsid, bdev = %ns.bdev_name, "namespace exported");
        }
        let mut real = Vec::new();
        for l in &s.listeners {
            real.push(add_listener(state, &s.nqn, l).map_err(|e| at("listener", e))?);
        }
        with_sub(state, &s.nqn, |c| c.listeners = real);
    }
    Ok(())
}

/// Stops the target: portals close, in-flight I/O completes, connections close.
pub fn stop(state: &State) {
    if !state.nvmf.shutdown(SHUTDOWN_GRACE) {
        tracing::warn!("NVMe/TCP connections still open after the shutdown grace period");
    }
}

/// The subsystem exporting `bdev`, if any (a bdev in use cannot be deleted).
pub fn bdev_in_use(state: &State, bdev: &str) -> Option<String> {
    state
        .config
        .lock()
        .expect("config lock")
        .nvmf_subsystems
        .iter()
        .find(|s| s.namespaces.iter().any(|n| n.bdev_name == bdev))
        .map(|s| s.nqn.clone())
}

fn address_json(l: &nvmf_target::Listener) -> Value {
    json!({
        "trtype": "TCP",
        "adrfam": if l.sock.is_ipv4() { "IPv4" } else { "IPv6" },
        "traddr": l.sock.ip().to_string(),
        "trsvcid": l.sock.port().to_string(),
    })
}

fn get_subsystems(target: &Target, filter: Option<&str>) -> Result<Value, RpcError> {
    let mut out = Vec::new();
    if filter.is_none() || filter == Some(nvme_spec_discovery()) {
        out.push(json!({
            "nqn": nvme_spec_discovery(),
            "subtype": "Discovery",
            "listen_addresses": [],
            "allow_any_host": true,
            "hosts": [],
        }));
    }
    let subs = match filter {
        Some(n) if n == nvme_spec_discovery() => Vec::new(),
        Some(n) => vec![target
            .subsystem(n)
            .ok_or_else(|| RpcError::no_device(format!("subsystem {n} does not exist")))?],
        None => target.subsystems(),
    };
    for s in subs {
        let i = s.info();
        out.push(json!({
            "nqn": i.nqn,
            "subtype": "NVMe",
            "serial_number": i.serial,
            "model_number": i.model,
            "allow_any_host": i.allow_any_host,
            "hosts": i.hosts.iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
            "max_namespaces": target.options().max_namespaces,
            "listen_addresses": i.listeners.iter().map(address_json).collect::<Vec<_>>(),
            "ana_states": i.listeners.iter().map(|l| {
                let mut v = address_json(l);
                v["ana_state"] = json!(ana_state_name(l.default_ana));
                v["ana_groups"] = l.ana.iter().map(|(g, s)| json!({"anagrpid": g, "ana_state": ana_state_name(*s)})).collect::<Vec<_>>().into();
                v
            }).collect::<Vec<_>>(),
            "namespaces": i.namespaces.iter().map(|n| {
                let info = n.bdev.info();
                json!({
                    "nsid": n.nsid,
                    "bdev_name": info.name,
                    "name": info.name,
                    "anagrpid": n.anagrpid,
                    "uuid": vmpath_bdev::uuid_string(&info.uuid),
                    "nguid": info.uuid.iter().map(|b| format!("{b:02X}")).collect::<String>(),
                })
            }).collect::<Vec<_>>(),
            "controllers": i.controllers.iter().map(|(id, host, q)| json!({"cntlid": id, "hostnqn": host, "io_queues": q})).collect::<Vec<_>>(),
        }));
    }
    Ok(Value::Array(out))
}

fn nvme_spec_discovery() -> &'static str {
    "nqn.2014-08.org.nvmexpress.discovery"
}

fn not_found(nqn: &str) -> RpcError {
    RpcError::no_device(format!("subsystem {nqn} does not exist"))
}

/// Serves the `nvmf_*` methods; `None` for other methods.
pub fn call(state: &State, method: &str, params: Option<Value>) -> Option<Result<Value, RpcError>> {
    let r = match method {
        "nvmf_create_subsystem" => (|| {
            let p: CreateParams = parse_params(params)?;
            let mut c = NvmfSubsystemConfig::new(p.nqn);
            if let Some(s) = p.serial_number {
                c.serial_number = s;
            }
            if let Some(m) = p.model_number {
                c.model_number = m;
            }
            c.allow_any_host = p.allow_any_host;
            create_subsystem(state, &c)?;
            state
                .config
                .lock()
                .expect("config lock")
                .nvmf_subsystems
                .push(c);
            Ok(Value::Bool(true))
        })(),
        "nvmf_delete_subsystem" => (|| {
            let p: NqnParam = parse_params(params)?;
            state.nvmf.delete_subsystem(&p.nqn).map_err(rpc_err)?;
            state
                .config
                .lock()
                .expect("config lock")
                .nvmf_subsystems
                .retain(|s| s.nqn != p.nqn);
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_add_ns" => (|| {
            let p: AddNsParams = parse_params(params)?;
            let nsid = add_ns(state, &p.nqn, &p.namespace)?;
            let mut ns = p.namespace.clone();
            ns.nsid = Some(nsid);
            with_sub(state, &p.nqn, |c| c.namespaces.push(ns));
            Ok(json!(nsid))
        })(),
        "nvmf_subsystem_remove_ns" => (|| {
            let p: RemoveNsParams = parse_params(params)?;
            state
                .nvmf
                .remove_namespace(&p.nqn, p.nsid)
                .map_err(rpc_err)?;
            with_sub(state, &p.nqn, |c| {
                c.namespaces.retain(|n| n.nsid != Some(p.nsid))
            });
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_add_listener" => (|| {
            let p: ListenerParams = parse_params(params)?;
            if p.anagrpid.is_some() {
                return Err(invalid(
                    "anagrpid: not a parameter of nvmf_subsystem_add_listener",
                ));
            }
            if state.nvmf.subsystem(&p.nqn).is_none() {
                return Err(not_found(&p.nqn));
            }
            let l = p.listen_address.listener(p.ana_state.as_deref())?;
            let real = add_listener(state, &p.nqn, &l)?;
            with_sub(state, &p.nqn, |c| c.listeners.push(real));
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_remove_listener" => (|| {
            let p: ListenerParams = parse_params(params)?;
            if p.ana_state.is_some() || p.anagrpid.is_some() {
                return Err(invalid(
                    "ana_state / anagrpid: not parameters of nvmf_subsystem_remove_listener",
                ));
            }
            let l = p.listen_address.listener(None)?;
            state
                .nvmf
                .remove_listener(&p.nqn, &ListenAddr::new(&l.traddr, &l.trsvcid))
                .map_err(rpc_err)?;
            with_sub(state, &p.nqn, |c| {
                c.listeners.retain(|x| !x.same_portal(&l))
            });
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_listener_set_ana_state" => (|| {
            let p: ListenerParams = parse_params(params)?;
            let name = p
                .ana_state
                .as_deref()
                .ok_or_else(|| invalid("missing field `ana_state`"))?;
            let ana = parse_ana_state(name).map_err(invalid)?;
            let l = p.listen_address.listener(Some(name))?;
            state
                .nvmf
                .set_ana_state(
                    &p.nqn,
                    &ListenAddr::new(&l.traddr, &l.trsvcid),
                    p.anagrpid,
                    ana,
                )
                .map_err(rpc_err)?;
            // The config keeps a listener's state for all groups; per-group states are
            // run-time only (like SPDK's save_config).
            if p.anagrpid.is_none() {
                with_sub(state, &p.nqn, |c| {
                    for x in c.listeners.iter_mut().filter(|x| x.same_portal(&l)) {
                        x.ana_state = name.to_string();
                    }
                });
            }
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_add_host" => (|| {
            let p: HostParams = parse_params(params)?;
            state.nvmf.add_host(&p.nqn, &p.host).map_err(rpc_err)?;
            with_sub(state, &p.nqn, |c| c.hosts.push(p.host.clone()));
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_remove_host" => (|| {
            let p: HostParams = parse_params(params)?;
            state.nvmf.remove_host(&p.nqn, &p.host).map_err(rpc_err)?;
            with_sub(state, &p.nqn, |c| c.hosts.retain(|h| *h != p.host));
            Ok(Value::Bool(true))
        })(),
        "nvmf_subsystem_allow_any_host" => (|| {
            let p: AllowAnyParams = parse_params(params)?;
            state
                .nvmf
                .set_allow_any_host(&p.nqn, p.allow_any_host)
                .map_err(rpc_err)?;
            with_sub(state, &p.nqn, |c| c.allow_any_host = p.allow_any_host);
            Ok(Value::Bool(true))
        })(),
        "nvmf_get_subsystems" => (|| {
            let p: OptNqnParam = match params {
                None | Some(Value::Null) => OptNqnParam::default(),
                p => parse_params(p)?,
            };
            get_subsystems(&state.nvmf, p.nqn.as_deref())
        })(),
        _ => return None,
    };
    Some(r)
}

/// A target over the daemon's reactors.
pub fn new_target(reactors: Vec<vmpath_runtime::ReactorHandle>) -> Result<Arc<Target>, String> {
    Target::new(nvmf_target::TargetOptions::default(), reactors)
        .map(Arc::new)
        .map_err(|e| format!("NVMe/TCP target: {e}"))
}
