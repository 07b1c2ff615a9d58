//! NVMe/TCP host RPCs (SPDK names and parameters, so operators' scripts carry over):
//!
//! | method | params | result |
//! |---|---|---|
//! | `bdev_nvme_attach_controller` | [`NvmeControllerConfig`] (`name`, `trtype`, `adrfam`, `traddr`, `trsvcid`, `subnqn`, `hostnqn`, `multipath`, timers) | array of bdev names |
//! | `bdev_nvme_detach_controller` | `{"name", "traddr"?, "trsvcid"?, "subnqn"?, ...}` | `true` |
//! | `bdev_nvme_get_controllers` | `{"name"?}` | `[{"name", "ctrlrs": [...]}]` |
//! | `bdev_nvme_get_io_paths` | `{"name"?}` (bdev name) | `{"io_paths": [...]}` (state and load per path) |
//! | `bdev_nvme_set_options` | timers (`keep_alive_timeout_ms`, `timeout_us`, `ctrlr_loss_timeout_sec`, ...), `name`? | `true` |
//! | `bdev_nvme_set_multipath_policy` | `{"name", "policy", "selector"?, "rr_min_io"?}` | `true` |
//!
//! Attaching a second controller under an existing `name` adds a path to the namespaces
//! whose NGUID / EUI-64 / UUID match. The namespaces (`{name}n{nsid}`) are registered as
//! bdevs. `bdev_nvme_set_options` without `name` sets the defaults of later attaches; with
//! `name` (a vmpath extension) it changes the controllers of that group at once. Every
//! attached controller is kept in `State.config` with its effective timers, so `save_config`
//! rebuilds the same controllers.

use std::sync::Arc;

use nvme_paths::{AttachParams, CtrlOptions, MultipathMode, PolicyKind, Trid};
use serde::Deserialize;
use serde_json::{json, Value};
use vmpath_config::NvmeControllerConfig;
use vmpath_mgmt::{parse_params, RpcError};

use crate::daemon::State;

/// The methods served here.
pub const METHODS: &[&str] = &[
    "bdev_nvme_attach_controller",
    "bdev_nvme_detach_controller",
    "bdev_nvme_get_controllers",
    "bdev_nvme_get_io_paths",
    "bdev_nvme_set_options",
    "bdev_nvme_set_multipath_policy",
];

/// Converts config / RPC params into attach params, starting from `defaults`.
pub fn attach_params(
    c: &NvmeControllerConfig,
    defaults: CtrlOptions,
) -> Result<AttachParams, String> {
    c.validate().map_err(|e| e.to_string())?;
    let t = c.timers().map_err(|e| e.to_string())?;
    let mut o = defaults;
    let norm = |v: i64| if v < 0 { -1 } else { v };
    if let Some(v) = t.ctrlr_loss_timeout_ms {
        o.ctrlr_loss_timeout_ms = norm(v);
    }
    if let Some(v) = t.reconnect_delay_ms {
        o.reconnect_delay_ms = v;
    }
    if let Some(v) = t.fast_io_fail_timeout_ms {
        o.fast_io_fail_timeout_ms = norm(v);
    }
    if let Some(v) = c.keep_alive_timeout_ms {
        o.keep_alive_timeout_ms = v;
    }
    if let Some(v) = c.timeout_us {
        o.io_timeout_us = v;
    }
    if let Some(v) = c.timeout_admin_ms {
        o.admin_timeout_ms = v;
    }
    if let Some(v) = c.connect_timeout_ms {
        o.connect_timeout_ms = v;
    }
    if let Some(v) = c.write_fence_grace_ms {
        o.write_fence_grace_ms = v;
    }
    if let Some(v) = c.io_queue_depth {
        o.io_queue_depth = v;
    }
    if let Some(v) = c.hdgst {
        o.hdgst = v;
    }
    if let Some(v) = c.ddgst {
        o.ddgst = v;
    }
    let multipath = match c.multipath_mode() {
        "disable" => MultipathMode::Disable,
        "failover" => MultipathMode::Failover,
        _ => MultipathMode::Multipath,
    };
    let p = AttachParams {
        name: c.name.clone(),
        trid: Trid {
            trtype: c.trtype.to_ascii_lowercase(),
            adrfam: c.adrfam.to_ascii_lowercase(),
            traddr: c.traddr.clone(),
            trsvcid: c.trsvcid.clone(),
            subnqn: c.subnqn.clone(),
        },
        hostnqn: c.hostnqn.clone(),
        multipath,
        opts: o,
    };
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

/// The config entry that re-creates a controller with exactly these options.
pub fn effective_config(c: &NvmeControllerConfig, o: &CtrlOptions) -> NvmeControllerConfig {
    let mut c = c.clone();
    c.ctrlr_loss_timeout_sec = None;
    c.reconnect_delay_sec = None;
    c.fast_io_fail_timeout_sec = None;
    c.ctrlr_loss_timeout_ms = Some(o.ctrlr_loss_timeout_ms);
    c.reconnect_delay_ms = Some(o.reconnect_delay_ms);
    c.fast_io_fail_timeout_ms = Some(o.fast_io_fail_timeout_ms);
    c.keep_alive_timeout_ms = Some(o.keep_alive_timeout_ms);
    c.timeout_us = Some(o.io_timeout_us);
    c.timeout_admin_ms = Some(o.admin_timeout_ms);
    c.connect_timeout_ms = Some(o.connect_timeout_ms);
    c.write_fence_grace_ms = Some(o.write_fence_grace_ms);
    c.io_queue_depth = Some(o.io_queue_depth);
    c.hdgst = Some(o.hdgst);
    c.ddgst = Some(o.ddgst);
    c
}

/// Attaches a controller and registers its new namespaces as bdevs. Used by the RPC and at
/// daemon start. Returns the bdev names.
pub fn attach(state: &State, c: &NvmeControllerConfig) -> Result<Vec<String>, RpcError> {
    let p = attach_params(c, state.nvme.default_options()).map_err(RpcError::invalid_params)?;
    let attached = state.nvme.attach_controller(&p).map_err(|e| match e {
        nvme_paths::HostError::Options(_) => RpcError::invalid_params(e.to_string()),
        nvme_paths::HostError::Exists(_) => RpcError::exists(e.to_string()),
        _ => RpcError::internal(e.to_string()),
    })?;
    for ns in &attached.created {
        let dev: Arc<dyn vmpath_bdev::BlockDevice> = ns.clone();
        if let Err(e) = state.bdevs.insert(dev) {
            // Undo: the namespace's name is taken by another bdev.
            let _ = state.nvme.detach_controller(
                &p.name,
                Some(&p.trid.traddr),
                Some(&p.trid.trsvcid),
                Some(&p.trid.subnqn),
            );
            for other in &attached.created {
                if other.name() != ns.name() {
                    let _ = state.bdevs.remove(other.name());
                }
            }
            return Err(RpcError::exists(format!("cannot register namespace: {e}")));
        }
    }
    state
        .config
        .lock()
        .expect("config lock")
        .nvme_controllers
        .push(effective_config(c, &p.opts));
    tracing::info!(name = %p.name, trid = %p.trid, bdevs = ?attached.bdevs, "NVMe controller attached");
    Ok(attached.bdevs)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetachParams {
    name: String,
    #[serde(default)]
    trtype: Option<String>,
    #[serde(default)]
    adrfam: Option<String>,
    #[serde(default)]
    traddr: Option<String>,
    #[serde(default)]
    trsvcid: Option<String>,
    #[serde(default)]
    subnqn: Option<String>,
    #[serde(default)]
    hostnqn: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
}

/// `bdev_nvme_set_options` params: every field optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    keep_alive_timeout_ms: Option<u32>,
    #[serde(default)]
    timeout_us: Option<u64>,
    #[serde(default)]
    timeout_admin_ms: Option<u64>,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    ctrlr_loss_timeout_sec: Option<i64>,
    #[serde(default)]
    ctrlr_loss_timeout_ms: Option<i64>,
    #[serde(default)]
    reconnect_delay_sec: Option<u64>,
    #[serde(default)]
    reconnect_delay_ms: Option<u64>,
    #[serde(default)]
    fast_io_fail_timeout_sec: Option<i64>,
    #[serde(default)]
    fast_io_fail_timeout_ms: Option<i64>,
    #[serde(default)]
    write_fence_grace_ms: Option<u64>,
    #[serde(default)]
    io_queue_depth: Option<u16>,
    #[serde(default)]
    hdgst: Option<bool>,
    #[serde(default)]
    ddgst: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyParams {
    name: String,
    policy: String,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    rr_min_io: Option<u32>,
}

/// Serves `method` if it is one of [`METHODS`].
pub fn call(state: &State, method: &str, params: Option<Value>) -> Option<Result<Value, RpcError>> {
    Some(match method {
        "bdev_nvme_attach_controller" => (|| {
            let c: NvmeControllerConfig = parse_params(params)?;
            attach(state, &c).map(|b| json!(b))
        })(),
        "bdev_nvme_detach_controller" => (|| {
            let p: DetachParams = parse_params(params)?;
            let _ = (&p.trtype, &p.adrfam, &p.hostnqn);
            let removed = state
                .nvme
                .detach_controller(
                    &p.name,
                    p.traddr.as_deref(),
                    p.trsvcid.as_deref(),
                    p.subnqn.as_deref(),
                )
                .map_err(|e| RpcError::no_device(e.to_string()))?;
            for b in &removed {
                let _ = state.bdevs.remove(b);
            }
            state
                .config
                .lock()
                .expect("config lock")
                .nvme_controllers
                .retain(|c| {
                    !(c.name == p.name
                        && p.traddr.as_deref().is_none_or(|a| a == c.traddr)
                        && p.trsvcid.as_deref().is_none_or(|s| s == c.trsvcid)
                        && p.subnqn.as_deref().is_none_or(|n| n == c.subnqn))
                });
            tracing::info!(name = %p.name, removed = ?removed, "NVMe controller detached");
            Ok(Value::Bool(true))
        })(),
        "bdev_nvme_get_controllers" => (|| {
            let p: OptName = match params {
                None | Some(Value::Null) => OptName::default(),
                p => parse_params(p)?,
            };
            let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
            for c in state.nvme.controllers() {
                if p.name.as_deref().is_some_and(|n| n != c.name) {
                    continue;
                }
                let entry = json!({
                    "state": c.state,
                    "cntlid": c.cntlid,
                    "trid": {
                        "trtype": c.trid.trtype.to_uppercase(),
                        "adrfam": c.trid.adrfam.to_uppercase(),
                        "traddr": c.trid.traddr,
                        "trsvcid": c.trid.trsvcid,
                        "subnqn": c.trid.subnqn,
                    },
                    "host": { "nqn": c.hostnqn },
                    "serial_number": c.serial_number,
                    "model_number": c.model_number,
                    "firmware_revision": c.firmware_revision,
                    "resets": c.resets,
                    "multipath": c.multipath,
                    "bdevs": c.bdevs,
                    "options": {
                        "keep_alive_timeout_ms": c.options.keep_alive_timeout_ms,
                        "timeout_us": c.options.io_timeout_us,
                        "timeout_admin_ms": c.options.admin_timeout_ms,
                        "ctrlr_loss_timeout_ms": c.options.ctrlr_loss_timeout_ms,
                        "reconnect_delay_ms": c.options.reconnect_delay_ms,
                        "fast_io_fail_timeout_ms": c.options.fast_io_fail_timeout_ms,
                        "write_fence_grace_ms": c.options.write_fence_grace_ms,
                        "io_queue_depth": c.options.io_queue_depth,
                    },
                });
                match groups.iter_mut().find(|(n, _)| *n == c.name) {
                    Some((_, v)) => v.push(entry),
                    None => groups.push((c.name.clone(), vec![entry])),
                }
            }
            if let Some(n) = &p.name {
                if groups.is_empty() {
                    return Err(RpcError::no_device(format!("no NVMe controller named {n}")));
                }
            }
            Ok(Value::Array(
                groups
                    .into_iter()
                    .map(|(name, ctrlrs)| json!({ "name": name, "ctrlrs": ctrlrs }))
                    .collect(),
            ))
        })(),
        "bdev_nvme_get_io_paths" => (|| {
            let p: OptName = match params {
                None | Some(Value::Null) => OptName::default(),
                p => parse_params(p)?,
            };
            let list = state
                .nvme
                .io_paths(p.name.as_deref())
                .map_err(|e| RpcError::no_device(e.to_string()))?;
            let mut out = Vec::new();
            for (bdev, paths) in list {
                for s in paths {
                    out.push(json!({
                        "bdev_name": bdev,
                        "path_id": s.id.0,
                        "name": s.name,
                        "kind": s.kind,
                        "state": s.state.as_str(),
                        "current": s.state.is_usable(),
                        "connected": !matches!(s.state, nvme_paths::PathState::Connecting | nvme_paths::PathState::Failed | nvme_paths::PathState::FailingOver),
                        "accessible": s.state.is_usable(),
                        "controller": s.controller,
                        "cntlid": s.cntlid,
                        "nsid": s.nsid,
                        "transport": { "traddr": s.traddr, "trsvcid": s.trsvcid },
                        "outstanding_ios": s.outstanding_ios,
                        "outstanding_bytes": s.outstanding_bytes,
                        "ewma_service_us": s.ewma_service_ns as f64 / 1000.0,
                        "completed_ios": s.completed_ios,
                        "completed_bytes": s.completed_bytes,
                        "errors": s.errors,
                        "in_doubt_writes": s.in_doubt_writes,
                    }));
                }
            }
            Ok(json!({ "io_paths": out }))
        })(),
        "bdev_nvme_set_options" => (|| {
            let p: SetOptions = match params {
                None | Some(Value::Null) => SetOptions::default(),
                p => parse_params(p)?,
            };
            let both = |a: bool, b: bool, f: &str| {
                if a && b {
                    Err(RpcError::invalid_params(format!(
                        "{f}: give either the _sec or the _ms form"
                    )))
                } else {
                    Ok(())
                }
            };
            both(
                p.ctrlr_loss_timeout_sec.is_some(),
                p.ctrlr_loss_timeout_ms.is_some(),
                "ctrlr_loss_timeout",
            )?;
            both(
                p.reconnect_delay_sec.is_some(),
                p.reconnect_delay_ms.is_some(),
                "reconnect_delay",
            )?;
            both(
                p.fast_io_fail_timeout_sec.is_some(),
                p.fast_io_fail_timeout_ms.is_some(),
                "fast_io_fail_timeout",
            )?;
            let neg = |v: i64| if v < 0 { -1 } else { v.saturating_mul(1000) };
            let apply = |o: &mut CtrlOptions| {
                if let Some(v) = p.keep_alive_timeout_ms {
                    o.keep_alive_timeout_ms = v;
                }
                if let Some(v) = p.timeout_us {
                    o.io_timeout_us = v;
                }
                if let Some(v) = p.timeout_admin_ms {
                    o.admin_timeout_ms = v;
                }
                if let Some(v) = p.connect_timeout_ms {
                    o.connect_timeout_ms = v;
                }
                if let Some(v) = p
                    .ctrlr_loss_timeout_sec
                    .map(neg)
                    .or(p.ctrlr_loss_timeout_ms)
                {
                    o.ctrlr_loss_timeout_ms = if v < 0 { -1 } else { v };
                }
                if let Some(v) = p
                    .reconnect_delay_sec
                    .map(|s| s.saturating_mul(1000))
                    .or(p.reconnect_delay_ms)
                {
                    o.reconnect_delay_ms = v;
                }
                if let Some(v) = p
                    .fast_io_fail_timeout_sec
                    .map(neg)
                    .or(p.fast_io_fail_timeout_ms)
                {
                    o.fast_io_fail_timeout_ms = if v < 0 { -1 } else { v };
                }
                if let Some(v) = p.write_fence_grace_ms {
                    o.write_fence_grace_ms = v;
                }
                if let Some(v) = p.io_queue_depth {
                    o.io_queue_depth = v;
                }
                if let Some(v) = p.hdgst {
                    o.hdgst = v;
                }
                if let Some(v) = p.ddgst {
                    o.ddgst = v;
                }
            };
            state
                .nvme
                .update_options(p.name.as_deref(), &apply)
                .map_err(|e| match e {
                    nvme_paths::HostError::NotFound(_) => RpcError::no_device(e.to_string()),
                    _ => RpcError::invalid_params(e.to_string()),
                })?;
            if let Some(n) = &p.name {
                let ctrls = state.nvme.controller(n);
                let mut cfg = state.config.lock().expect("config lock");
                for c in cfg.nvme_controllers.iter_mut().filter(|c| c.name == *n) {
                    if let Some(ctrl) = ctrls.iter().find(|x| {
                        let t = x.trid();
                        t.traddr == c.traddr && t.trsvcid == c.trsvcid && t.subnqn == c.subnqn
                    }) {
                        *c = effective_config(c, &ctrl.options());
                    }
                }
            }
            Ok(Value::Bool(true))
        })(),
        "bdev_nvme_set_multipath_policy" => (|| {
            let p: PolicyParams = parse_params(params)?;
            let ns = state
                .nvme
                .namespace(&p.name)
                .ok_or_else(|| RpcError::no_device(format!("no NVMe bdev named {}", p.name)))?;
            let kind = match (p.policy.as_str(), p.selector.as_deref()) {
                ("active_passive", _) => PolicyKind::ActivePassive,
                ("active_active", None | Some("round_robin")) => PolicyKind::RoundRobin {
                    rr_min_io: p.rr_min_io.unwrap_or(1).max(1),
                },
                ("active_active", Some("queue_depth")) => PolicyKind::QueueDepth,
                (pol, sel) => {
                    return Err(RpcError::invalid_params(format!(
                        "policy must be active_passive or active_active (selector round_robin or queue_depth), got {pol:?} / {sel:?}"
                    )))
                }
            };
            ns.set_policy(kind);
            Ok(Value::Bool(true))
        })(),
        _ => return None,
    })
}

/// Forwards path events to the management event bus (`nvme_path_*` events).
pub fn forward_events(state: &State) {
    let bus = state.events.clone();
    state.nvme.on_event(Box::new(move |e| {
        let kind = match &e.kind {
            nvme_paths::PathEventKind::Up { .. } => "nvme_path_up",
            nvme_paths::PathEventKind::Down { .. } => "nvme_path_down",
            nvme_paths::PathEventKind::FailoverStarted => "nvme_path_failover_started",
            nvme_paths::PathEventKind::FailoverFinished { .. } => "nvme_path_failover_finished",
            nvme_paths::PathEventKind::AnaChange { .. } => "nvme_path_ana_change",
            nvme_paths::PathEventKind::Added => "nvme_path_added",
            nvme_paths::PathEventKind::Removed { .. } => "nvme_path_removed",
        };
        bus.publish(kind, serde_json::to_value(e).unwrap_or(Value::Null));
    }));
}

/// Attaches the `[[nvme_controller]]`s of the config (daemon start). The config entries are
/// replaced by their effective form.
pub fn attach_configured(state: &State) -> Result<(), String> {
    let list = std::mem::take(&mut state.config.lock().expect("config lock").nvme_controllers);
    for (i, c) in list.iter().enumerate() {
        attach(state, c).map_err(|e| {
            format!(
                "nvme_controller[{i}] ({} at {}:{}): {}",
                c.name, c.traddr, c.trsvcid, e.message
            )
        })?;
    }
    Ok(())
}
