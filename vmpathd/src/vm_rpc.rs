//! VMs, scheduler paths and volumes: building them from the config and the RPC methods.
//!
//! | method | params | result |
//! |---|---|---|
//! | `vm_create` | a VM spec (`name`, `shares`, `reservation`, `limit`, `priority`, `path_policy`, `failover`, `max_held`) | VM name |
//! | `vm_delete` | `{"name"}` | `true` (refused while the VM has volumes or bound hosts) |
//! | `vm_set_qos` | `{"name", "shares"?, "reservation"?, "limit"?, "priority"?, "failover"?, "max_held"?}` | `true` |
//! | `vm_set_path_policy` | `{"name", "selector", "affinity"?}` | `true` |
//! | `vm_get_vms` | `{"name"?}` | VMs with spec, state and counters |
//! | `vm_suspend` / `vm_resume` | `{"name"}` | `true` |
//! | `sched_path_add` | `{"name", "bdev", "capacity_iops", "capacity_mbps", "weight"?, "max_outstanding"?}` | path name |
//! | `sched_path_remove` | `{"name"}` | `true` |
//! | `sched_path_set_state` | `{"name", "state"}` (`optimized`, `non-optimized`, `inaccessible`, `failed`, `failing-over`) | `true` |
//! | `sched_get_paths` | – | paths with state and load |
//! | `volume_create` | `{"name", "vm", "paths", "offset_blocks"?, "num_blocks"?}` | volume name (also a bdev) |
//! | `volume_delete` | `{"name"}` | `true` |
//! | `volume_get_volumes` | – | volumes |
//!
//! Binding remote hosts to VMs (`vm_bind_host`, `vm_unbind_host`, `vm_get_hosts`) is in
//! [`crate::hosts`].
//!
//! A reservation the paths cannot carry is refused (admission control) with the scheduler's
//! message. Scheduler events (`vm_migrate_recommended`, `vm_migrate_cleared`, `vm_suspended`,
//! `vm_resumed`) are published on the event bus (`vmpath_get_events`) and, for migrate
//! recommendations, run the `[hooks] vm_migrate` command.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use vmpath_config::vm::{PathPolicySpec, PathState, SelectorSpec, VmSpec};
use vmpath_config::{PathConfig, VolumeConfig};
use vmpath_mgmt::{parse_params, RpcError};
use vmpath_volume::VmVolume;

use crate::daemon::State;

/// The methods of this module.
pub const METHODS: &[&str] = &[
    "vm_create",
    "vm_delete",
    "vm_set_qos",
    "vm_set_path_policy",
    "vm_get_vms",
    "vm_suspend",
    "vm_resume",
    "sched_path_add",
    "sched_path_remove",
    "sched_path_set_state",
    "sched_get_paths",
    "volume_create",
    "volume_delete",
    "volume_get_volumes",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPathPolicy {
    name: String,
    #[serde(default)]
    selector: SelectorSpec,
    #[serde(default)]
    affinity: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPathState {
    name: String,
    state: PathState,
}

fn sched_err(e: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(e.to_string())
}

/// Creates a scheduler path over a registered bdev.
pub fn add_path(state: &State, p: &PathConfig) -> Result<(), RpcError> {
    p.validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    let dev = state
        .bdevs
        .get(&p.bdev)
        .map_err(|e| RpcError::no_device(e.to_string()))?;
    if state.volumes.scheduler().path_id(&p.name).is_some() {
        return Err(RpcError::exists(format!("path {} already exists", p.name)));
    }
    let mut spec = p.spec();
    if let Some(route) = p.fabric_path {
        let ns = state.nvme.namespace(&p.bdev).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "fabric_path: bdev {} is not a multipath NVMe namespace",
                p.bdev
            ))
        })?;
        let path = ns.path(nvme_paths::PathId(route)).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "fabric_path: namespace {} has no path {route} (see bdev_nvme_get_io_paths)",
                p.bdev
            ))
        })?;
        spec.state = sched_state(path.state());
    }
    state
        .volumes
        .add_routed_path(spec, dev, p.fabric_path)
        .map_err(sched_err)?;
    Ok(())
}

/// The scheduler's view of a fabric path state (the same six states).
pub fn sched_state(s: nvme_paths::PathState) -> PathState {
    match s {
        nvme_paths::PathState::Connecting => PathState::Connecting,
        nvme_paths::PathState::Optimized => PathState::Optimized,
        nvme_paths::PathState::NonOptimized => PathState::NonOptimized,
        nvme_paths::PathState::Inaccessible => PathState::Inaccessible,
        nvme_paths::PathState::Failed => PathState::Failed,
        nvme_paths::PathState::FailingOver => PathState::FailingOver,
    }
}

/// Keeps scheduler paths over fabric paths in step with them: up/down, ANA changes and
/// failovers reported by the NVMe/TCP host update the scheduler, which re-routes, holds or
/// suspends the VMs that use them.
pub fn follow_fabric_paths(state: &Arc<State>) {
    let mgr = state.volumes.clone();
    state.nvme.on_event(Box::new(move |e| {
        let Some(id) = mgr.path_for_route(&e.bdev, e.path.0) else {
            return;
        };
        let sched = mgr.scheduler();
        let r = match &e.kind {
            nvme_paths::PathEventKind::FailoverStarted => sched.failover_started(id),
            nvme_paths::PathEventKind::FailoverFinished { .. } => {
                sched.failover_finished(id, PathState::Failed)
            }
            nvme_paths::PathEventKind::Up { state } => {
                sched.set_path_state(id, sched_state(*state))
            }
            nvme_paths::PathEventKind::AnaChange { new, .. } => {
                sched.set_path_state(id, sched_state(*new))
            }
            nvme_paths::PathEventKind::Down { .. } | nvme_paths::PathEventKind::Removed { .. } => {
                sched.set_path_state(id, PathState::Failed)
            }
            nvme_paths::PathEventKind::Added => Ok(()),
        };
        match r {
            Ok(()) => tracing::info!(bdev = %e.bdev, path = %e.path_name, sched_path = id.index(),
                event = ?e.kind, "scheduler path follows fabric path"),
            Err(err) => {
                tracing::warn!(path = %e.path_name, error = %err, "scheduler path state update")
            }
        }
    }));
}

/// Creates a volume (and registers it as a bdev).
pub fn create_volume(state: &State, v: &VolumeConfig) -> Result<Arc<VmVolume>, RpcError> {
    v.validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if state.bdevs.contains(&v.name) {
        return Err(RpcError::exists(format!("bdev {} already exists", v.name)));
    }
    let sched = state.volumes.scheduler();
    let vm = sched
        .vm_id(&v.vm)
        .ok_or_else(|| RpcError::no_device(format!("VM {} does not exist", v.vm)))?;
    let vol = state
        .volumes
        .create_volume(&v.name, vm, &v.paths, v.offset_blocks, v.num_blocks)
        .map_err(sched_err)?;
    state
        .bdevs
        .insert(vol.clone())
        .map_err(|e| RpcError::exists(e.to_string()))?;
    state.hosts.add_volume(&vol);
    Ok(vol)
}

fn vm_json(state: &State, info: &scheduler::VmInfo) -> Value {
    json!({
        "name": info.spec.name,
        "hosts": state.hosts.hosts_of(info.id),
        "spec": info.spec,
        "suspended": info.suspended.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>(),
        "serving_path": info.serving_path.map(|p| p.index()),
        "home_path": info.home_path.map(|p| p.index()),
        "held": info.held,
        "inflight": info.inflight,
        "dispatched_ios": info.dispatched_ios,
        "dispatched_bytes": info.dispatched_bytes,
        "failed_ios": info.failed_ios,
        "migrate_recommended": info.migrate_recommended,
    })
}

/// Handles the methods of this module; `None` if `method` is not one of them.
pub fn call(state: &State, method: &str, params: Option<Value>) -> Option<Result<Value, RpcError>> {
    Some(match method {
        "vm_create" => vm_create(state, params),
        "vm_delete" => vm_delete(state, params),
        "vm_set_qos" => vm_set_qos(state, params),
        "vm_set_path_policy" => vm_set_path_policy(state, params),
        "vm_get_vms" => vm_get_vms(state, params),
        "vm_suspend" | "vm_resume" => vm_suspend_resume(state, params, method == "vm_suspend"),
        "sched_path_add" => (|| {
            let p: PathConfig = parse_params(params)?;
            add_path(state, &p)?;
            state.config.lock().expect("config").paths.push(p.clone());
            Ok(Value::String(p.name))
        })(),
        "sched_path_remove" => (|| {
            let p: Name = parse_params(params)?;
            let sched = state.volumes.scheduler();
            let id = sched
                .path_id(&p.name)
                .ok_or_else(|| RpcError::no_device(format!("path {} does not exist", p.name)))?;
            let cfg = state.config.lock().expect("config");
            if let Some(v) = cfg.volumes.iter().find(|v| v.paths.contains(&p.name)) {
                return Err(RpcError::busy(format!(
                    "path {} is used by volume {}",
                    p.name, v.name
                )));
            }
            drop(cfg);
            state.volumes.remove_path(id).map_err(sched_err)?;
            state
                .config
                .lock()
                .expect("config")
                .paths
                .retain(|x| x.name != p.name);
            Ok(Value::Bool(true))
        })(),
        "sched_path_set_state" => (|| {
            let p: SetPathState = parse_params(params)?;
            let sched = state.volumes.scheduler();
            let id = sched
                .path_id(&p.name)
                .ok_or_else(|| RpcError::no_device(format!("path {} does not exist", p.name)))?;
            match p.state {
                PathState::FailingOver => sched.failover_started(id),
                s => sched.set_path_state(id, s),
            }
            .map_err(sched_err)?;
            Ok(Value::Bool(true))
        })(),
        "sched_get_paths" => Ok(json!(state
            .volumes
            .scheduler()
            .paths()
            .iter()
            .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
            .collect::<Vec<_>>())),
        "volume_create" => (|| {
            let v: VolumeConfig = parse_params(params)?;
            create_volume(state, &v)?;
            state.config.lock().expect("config").volumes.push(v.clone());
            Ok(Value::String(v.name))
        })(),
        "volume_delete" => (|| {
            let p: Name = parse_params(params)?;
            let known = state
                .config
                .lock()
                .expect("config")
                .volumes
                .iter()
                .any(|v| v.name == p.name);
            if !known {
                return Err(RpcError::no_device(format!(
                    "volume {} does not exist",
                    p.name
                )));
            }
            state
                .bdevs
                .remove(&p.name)
                .map_err(|e| RpcError::no_device(e.to_string()))?;
            state.hosts.remove_volume(&p.name);
            state
                .config
                .lock()
                .expect("config")
                .volumes
                .retain(|v| v.name != p.name);
            Ok(Value::Bool(true))
        })(),
        "volume_get_volumes" => {
            let cfg = state.config.lock().expect("config");
            Ok(json!(cfg
                .volumes
                .iter()
                .map(|v| {
                    let blocks = state
                        .bdevs
                        .get(&v.name)
                        .map(|d| d.info().num_blocks)
                        .unwrap_or(0);
                    json!({
                        "name": v.name, "vm": v.vm, "paths": v.paths,
                        "offset_blocks": v.offset_blocks, "num_blocks": blocks,
                    })
                })
                .collect::<Vec<_>>()))
        }
        _ => return None,
    })
}

fn vm_create(state: &State, params: Option<Value>) -> Result<Value, RpcError> {
    let spec: VmSpec = parse_params(params)?;
    spec.validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    let sched = state.volumes.scheduler();
    if sched.vm_id(&spec.name).is_some() {
        return Err(RpcError::exists(format!("VM {} already exists", spec.name)));
    }
    sched.create_vm(spec.clone()).map_err(sched_err)?;
    let name = spec.name.clone();
    state.config.lock().expect("config").vms.push(spec);
    Ok(Value::String(name))
}

fn vm_delete(state: &State, params: Option<Value>) -> Result<Value, RpcError> {
    let p: Name = parse_params(params)?;
    let sched = state.volumes.scheduler();
    let vm = sched
        .vm_id(&p.name)
        .ok_or_else(|| RpcError::no_device(format!("VM {} does not exist", p.name)))?;
    if let Some(v) = state
        .config
        .lock()
        .expect("config")
        .volumes
        .iter()
        .find(|v| v.vm == p.name)
    {
        return Err(RpcError::busy(format!(
            "VM {} still has volume {}; delete it first",
            p.name, v.name
        )));
    }
    if let Some(h) = state.hosts.hosts_of(vm).first() {
        return Err(RpcError::busy(format!(
            "host {h} is bound to VM {}; unbind it first (vm_unbind_host)",
            p.name
        )));
    }
    sched.delete_vm(vm).map_err(sched_err)?;
    state
        .config
        .lock()
        .expect("config")
        .vms
        .retain(|v| v.name != p.name);
    Ok(Value::Bool(true))
}

fn vm_set_qos(state: &State, params: Option<Value>) -> Result<Value, RpcError> {
    let Some(Value::Object(mut obj)) = params else {
        return Err(RpcError::invalid_params(
            "expected an object: name and the QoS fields to change",
        ));
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) => n,
        _ => return Err(RpcError::invalid_params("name: missing or not a string")),
    };
    let update: scheduler::VmQosUpdate = parse_params(Some(Value::Object(obj)))?;
    let sched = state.volumes.scheduler();
    let vm = sched
        .vm_id(&name)
        .ok_or_else(|| RpcError::no_device(format!("VM {name} does not exist")))?;
    sched.set_qos(vm, &update).map_err(sched_err)?;
    if let Some(info) = sched.vm(vm) {
        let mut cfg = state.config.lock().expect("config");
        if let Some(v) = cfg.vms.iter_mut().find(|v| v.name == name) {
            *v = info.spec;
        }
    }
    Ok(Value::Bool(true))
}

fn vm_set_path_policy(state: &State, params: Option<Value>) -> Result<Value, RpcError> {
    let p: SetPathPolicy = parse_params(params)?;
    let sched = state.volumes.scheduler();
    let vm = sched
        .vm_id(&p.name)
        .ok_or_else(|| RpcError::no_device(format!("VM {} does not exist", p.name)))?;
    let policy = PathPolicySpec {
        selector: p.selector,
        affinity: p.affinity,
    };
    policy
        .validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    // A VM with volumes must stay on paths that reach their storage.
    {
        let cfg = state.config.lock().expect("config");
        for v in cfg.volumes.iter().filter(|v| v.vm == p.name) {
            let allowed: &[String] = if policy.affinity.is_empty() {
                &[]
            } else {
                &policy.affinity
            };
            if allowed.is_empty() {
                return Err(RpcError::invalid_params(format!(
                    "affinity: VM {} has volume {}; name its paths ({})",
                    p.name,
                    v.name,
                    v.paths.join(", ")
                )));
            }
            if let Some(bad) = allowed.iter().find(|a| !v.paths.contains(a)) {
                return Err(RpcError::invalid_params(format!(
                    "affinity: path {bad} does not reach volume {} (its paths: {})",
                    v.name,
                    v.paths.join(", ")
                )));
            }
        }
    }
    sched.set_path_policy(vm, policy).map_err(sched_err)?;
    if let Some(info) = sched.vm(vm) {
        let mut cfg = state.config.lock().expect("config");
        if let Some(v) = cfg.vms.iter_mut().find(|v| v.name == p.name) {
            *v = info.spec;
        }
    }
    Ok(Value::Bool(true))
}

fn vm_get_vms(state: &State, params: Option<Value>) -> Result<Value, RpcError> {
    let p: OptName = match params {
        None | Some(Value::Null) => OptName::default(),
        p => parse_params(p)?,
    };
    let sched = state.volumes.scheduler();
    let list = match p.name {
        Some(n) => {
            let vm = sched
                .vm_id(&n)
                .ok_or_else(|| RpcError::no_device(format!("VM {n} does not exist")))?;
            vec![sched
                .vm(vm)
                .ok_or_else(|| RpcError::no_device(format!("VM {n} does not exist")))?]
        }
        None => sched.vms(),
    };
    Ok(Value::Array(
        list.iter().map(|info| vm_json(state, info)).collect(),
    ))
}

fn vm_suspend_resume(
    state: &State,
    params: Option<Value>,
    suspend: bool,
) -> Result<Value, RpcError> {
    let p: Name = parse_params(params)?;
    let sched = state.volumes.scheduler();
    let vm = sched
        .vm_id(&p.name)
        .ok_or_else(|| RpcError::no_device(format!("VM {} does not exist", p.name)))?;
    if suspend {
        sched.suspend_vm(vm)
    } else {
        sched.resume_vm(vm)
    }
    .map_err(sched_err)?;
    Ok(Value::Bool(true))
}

/// Runs the scheduler's periodic work and forwards its events until `stop` is set: every
/// 50 ms, `Scheduler::tick` (migrate recommendations), then each event onto the event bus and,
/// for migrate events, the configured hook.
pub fn event_pump(state: Arc<State>, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        let sched = state.volumes.scheduler().clone();
        sched.tick(vmpath_runtime::now_ns());
        while let Some(ev) = sched.pop_event() {
            let data = serde_json::to_value(&ev).unwrap_or(Value::Null);
            let kind = data
                .get("event")
                .and_then(|k| k.as_str())
                .unwrap_or("scheduler_event")
                .to_string();
            tracing::info!(event = %kind, data = %data, "scheduler event");
            state.events.publish(kind.clone(), data.clone());
            if kind.starts_with("vm_migrate") {
                let hook = state
                    .config
                    .lock()
                    .expect("config")
                    .hooks
                    .vm_migrate
                    .clone();
                if let Some(cmd) = hook {
                    run_hook(&cmd, &kind, &data);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_hook(cmd: &str, kind: &str, data: &Value) {
    let s = |k: &str| {
        data.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    let child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .env("VMPATH_EVENT", kind)
        .env("VMPATH_VM", s("name"))
        .env("VMPATH_REASON", s("reason"))
        .env("VMPATH_MEASURED_IOPS", s("measured_iops"))
        .env("VMPATH_RESERVED_IOPS", s("reserved_iops"))
        .env("VMPATH_EVENT_JSON", data.to_string())
        .stdin(std::process::Stdio::null())
        .spawn();
    match child {
        // Reap it in the background so no zombie is left.
        Ok(mut c) => {
            std::thread::spawn(move || {
                let _ = c.wait();
            });
        }
        Err(e) => tracing::warn!(hook = cmd, error = %e, "cannot run vm_migrate hook"),
    }
}
