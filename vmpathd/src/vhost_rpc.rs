//! vhost-user-blk controllers: building them from the config and the RPC methods.
//!
//! | method | params | result |
//! |---|---|---|
//! | `vhost_create_blk_controller` | `{"ctrlr"/"name", "dev_name"/"bdev", "socket"?, "vm"?, "num_queues"?, "readonly"?}` | controller name |
//! | `vhost_delete_controller` | `{"ctrlr"}` | `true` |
//! | `vhost_get_controllers` | `{"name"?}` | controllers with queues, reactors and counters |
//!
//! A controller over a VM volume is scheduled per request through the volume (route or hold,
//! path choice) and its queues stop being pulled while the VM is suspended or backpressured
//! ([`SchedGate`]). Queues of one disk are spread over the reactors; each disk starts on a
//! different reactor so several disks spread too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};
use vhost::{Admit, GateChannel, GateIo, IoGate, VhostBlkController};
use vmpath_config::VhostBlkConfig;
use vmpath_mgmt::{parse_params, RpcError};
use vmpath_runtime::Reactor;
use vmpath_volume::VolumeManager;

use crate::daemon::State;

/// The methods of this module.
pub const METHODS: &[&str] = &[
    "vhost_create_blk_controller",
    "vhost_delete_controller",
    "vhost_get_controllers",
];

/// Running controllers by name.
pub type Controllers = Mutex<BTreeMap<String, VhostBlkController>>;

/// Lets the scheduler stop a VM's virtqueues from being pulled (suspension, full hold queue).
/// Admission itself happens in the VM's volume, so requests are always admitted here.
#[derive(Debug)]
pub struct SchedGate {
    mgr: Arc<VolumeManager>,
    vm: scheduler::VmId,
}

struct SchedGateChannel {
    mgr: Arc<VolumeManager>,
    vm: scheduler::VmId,
}

impl IoGate for SchedGate {
    fn open(&self, _vm: &str, _queue: u16, _reactor: &mut Reactor) -> Box<dyn GateChannel> {
        Box::new(SchedGateChannel {
            mgr: self.mgr.clone(),
            vm: self.vm,
        })
    }
}

impl GateChannel for SchedGateChannel {
    fn should_pull(&mut self, _now: u64) -> bool {
        self.mgr.should_pull(self.vm)
    }

    fn admit(&mut self, _io: &GateIo, _now: u64) -> Admit {
        Admit::Now
    }

    fn complete(&mut self, _io: &GateIo, _now: u64, _latency_ns: u64, _ok: bool) {}
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ctrlr {
    #[serde(alias = "name")]
    ctrlr: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OptName {
    #[serde(default)]
    name: Option<String>,
}

/// Creates and starts a controller.
pub fn create(state: &State, c: &VhostBlkConfig) -> Result<(), RpcError> {
    c.validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if state.vhost.lock().expect("vhost").contains_key(&c.name) {
        return Err(RpcError::exists(format!(
            "controller {} already exists",
            c.name
        )));
    }
    let dev = state
        .bdevs
        .get(&c.bdev)
        .map_err(|e| RpcError::no_device(e.to_string()))?;
    // A volume carries its VM; a plain bdev takes the optional `vm` tag as is.
    let volume = state
        .config
        .lock()
        .expect("config")
        .volumes
        .iter()
        .find(|v| v.name == c.bdev)
        .map(|v| v.vm.clone());
    let sched = state.volumes.scheduler();
    let (vm_name, gate): (String, Arc<dyn IoGate>) = match (&volume, &c.vm) {
        (Some(vol_vm), Some(vm)) if vol_vm != vm => {
            return Err(RpcError::invalid_params(format!(
                "vm: bdev {} is a volume of VM {vol_vm}, not {vm}",
                c.bdev
            )))
        }
        (Some(vm), _) => {
            let id = sched
                .vm_id(vm)
                .ok_or_else(|| RpcError::no_device(format!("VM {vm} does not exist")))?;
            (
                vm.clone(),
                Arc::new(SchedGate {
                    mgr: state.volumes.clone(),
                    vm: id,
                }),
            )
        }
        (None, Some(vm)) => {
            if sched.vm_id(vm).is_none() {
                return Err(RpcError::no_device(format!("VM {vm} does not exist")));
            }
            (vm.clone(), Arc::new(vhost::PassThrough))
        }
        (None, None) => (String::new(), Arc::new(vhost::PassThrough)),
    };
    let dir = state
        .config
        .lock()
        .expect("config")
        .vhost
        .socket_dir
        .clone();
    let socket = c.socket_path(&dir);
    // Rotate the reactor list so each disk's queue 0 lands on another reactor.
    let mut reactors = state.reactors.clone();
    let n = state.vhost.lock().expect("vhost").len();
    if !reactors.is_empty() {
        let k = n % reactors.len();
        reactors.rotate_left(k);
    }
    let mut cfg = vhost::VhostBlkConfig::new(&c.name, &socket, dev, vm_name, reactors);
    cfg.num_queues = c.num_queues;
    cfg.readonly = c.readonly;
    cfg.gate = gate;
    let mut ctrl =
        VhostBlkController::new(cfg).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    ctrl.start().map_err(|e| match e {
        vhost::VhostError::SocketInUse { .. } => RpcError::exists(e.to_string()),
        other => RpcError::io(format!("starting controller {}: {other}", c.name)),
    })?;
    tracing::info!(ctrlr = %c.name, socket = %socket.display(), bdev = %c.bdev, "vhost-user-blk controller ready");
    state
        .vhost
        .lock()
        .expect("vhost")
        .insert(c.name.clone(), ctrl);
    Ok(())
}

fn info_json(c: &VhostBlkController) -> Value {
    let i = c.info();
    let queues: Vec<Value> = i
        .queues
        .iter()
        .map(|q| {
            json!({
                "index": q.index, "reactor": q.reactor, "enabled": q.enabled, "size": q.size,
                "reads": q.stats.reads, "writes": q.stats.writes, "flushes": q.stats.flushes,
                "discards": q.stats.discards, "write_zeroes": q.stats.write_zeroes,
                "bytes_read": q.stats.bytes_read, "bytes_written": q.stats.bytes_written,
                "io_errors": q.stats.io_errors,
            })
        })
        .collect();
    json!({
        "ctrlr": i.name,
        "socket": i.socket_path,
        "vm": i.vm,
        "bdev": i.bdev,
        "num_queues": i.num_queues,
        "readonly": i.readonly,
        "connected": i.connected,
        "suspended": i.suspended,
        "queues": queues,
        "reads": i.total.reads,
        "writes": i.total.writes,
        "bytes_read": i.total.bytes_read,
        "bytes_written": i.total.bytes_written,
        "io_errors": i.total.io_errors,
    })
}

/// Stops every controller (daemon shutdown): guests stay untouched and can reconnect to a
/// restarted daemon (the inflight region re-runs what was in flight).
pub fn stop_all(state: &State) {
    let mut m = state.vhost.lock().expect("vhost");
    for (name, mut c) in std::mem::take(&mut *m) {
        if let Err(e) = c.stop() {
            tracing::warn!(ctrlr = %name, error = %e, "stopping vhost controller");
        }
    }
}

/// Handles the methods of this module; `None` if `method` is not one of them.
pub fn call(state: &State, method: &str, params: Option<Value>) -> Option<Result<Value, RpcError>> {
    Some(match method {
        "vhost_create_blk_controller" => (|| {
            let c: VhostBlkConfig = parse_params(params)?;
            create(state, &c)?;
            state
                .config
                .lock()
                .expect("config")
                .vhost_blks
                .push(c.clone());
            Ok(Value::String(c.name))
        })(),
        "vhost_delete_controller" => (|| {
            let p: Ctrlr = parse_params(params)?;
            let ctrl = state.vhost.lock().expect("vhost").remove(&p.ctrlr);
            let Some(mut ctrl) = ctrl else {
                return Err(RpcError::no_device(format!(
                    "controller {} does not exist",
                    p.ctrlr
                )));
            };
            ctrl.stop()
                .map_err(|e| RpcError::io(format!("stopping {}: {e}", p.ctrlr)))?;
            state
                .config
                .lock()
                .expect("config")
                .vhost_blks
                .retain(|c| c.name != p.ctrlr);
            Ok(Value::Bool(true))
        })(),
        "vhost_get_controllers" => (|| {
            let p: OptName = match params {
                None | Some(Value::Null) => OptName::default(),
                p => parse_params(p)?,
            };
            let m = state.vhost.lock().expect("vhost");
            match p.name {
                Some(n) => {
                    let c = m.get(&n).ok_or_else(|| {
                        RpcError::no_device(format!("controller {n} does not exist"))
                    })?;
                    Ok(Value::Array(vec![info_json(c)]))
                }
                None => Ok(Value::Array(m.values().map(info_json).collect())),
            }
        })(),
        _ => return None,
    })
}

/// True if `bdev` is used by a vhost controller (it may not be deleted then).
pub fn bdev_in_use(state: &State, bdev: &str) -> Option<String> {
    state
        .config
        .lock()
        .expect("config")
        .vhost_blks
        .iter()
        .find(|c| c.bdev == bdev)
        .map(|c| c.name.clone())
}
