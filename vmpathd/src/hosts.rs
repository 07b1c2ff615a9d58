//! Remote hosts scheduled as VMs: a host NQN bound to a VM (`[[host]]` in the config, or
//! `vm_bind_host` at run time) has its NVMe/TCP I/O go through that VM's queue, shares,
//! reservation, limit and path policy.
//!
//! | method | params | result |
//! |---|---|---|
//! | `vm_bind_host` | `{"hostnqn", "vm"}` | `true` (replaces the host's earlier binding) |
//! | `vm_unbind_host` | `{"hostnqn"}` | `true` |
//! | `vm_get_hosts` | – | `[{"hostnqn", "vm"}]` |
//!
//! How: the target asks the daemon, per I/O queue and namespace, which block device serves
//! that host ([`nvmf_target::AdmissionFactory::device_for`]). For a namespace that is a VM
//! volume and a host bound to another VM, the answer is a view of the volume (same blocks,
//! name and UUID) scheduled as the host's VM ([`vmpath_volume::VolumeManager::view_as`]);
//! one view per (volume, VM), so every queue of that VM on a reactor shares one channel.
//! Unbound hosts, and hosts bound to the volume's own VM, use the volume itself. A
//! namespace that is a plain bdev is not scheduled, whoever reaches it. A binding change
//! reaches connected queues on their next poll (`Target::refresh_routes`); commands already
//! submitted complete where they went.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use serde_json::{json, Value};
use vmpath_bdev::BlockDevice;
use vmpath_config::vm::HostBinding;
use vmpath_mgmt::{parse_params, RpcError};
use vmpath_volume::{VmVolume, VolumeManager};

use crate::daemon::State;
use scheduler::VmId;

/// The methods of this module.
pub const METHODS: &[&str] = &["vm_bind_host", "vm_unbind_host", "vm_get_hosts"];

#[derive(Default)]
struct Inner {
    /// Host NQN → VM.
    hosts: HashMap<String, VmId>,
    /// VM volumes by name (what namespaces may be backed by).
    volumes: HashMap<String, Arc<VmVolume>>,
    /// Views of a volume scheduled as another VM, by (volume name, VM).
    views: HashMap<(String, VmId), Arc<dyn BlockDevice>>,
}

/// The host → VM table and the device views it hands to the NVMe/TCP target.
pub struct HostBindings {
    volumes: Arc<VolumeManager>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for HostBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBindings")
            .field("hosts", &self.lock().hosts.len())
            .finish_non_exhaustive()
    }
}

impl HostBindings {
    /// An empty table over the daemon's volumes.
    pub fn new(volumes: Arc<VolumeManager>) -> HostBindings {
        HostBindings {
            volumes,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a VM volume (a namespace may be backed by it).
    pub fn add_volume(&self, vol: &Arc<VmVolume>) {
        self.lock()
            .volumes
            .insert(vol.info().name.clone(), vol.clone());
    }

    /// Forgets a deleted volume and its views.
    pub fn remove_volume(&self, name: &str) {
        let mut g = self.lock();
        g.volumes.remove(name);
        g.views.retain(|(v, _), _| v != name);
    }

    /// Host NQNs bound to `vm`.
    pub fn hosts_of(&self, vm: VmId) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .hosts
            .iter()
            .filter(|(_, &x)| x == vm)
            .map(|(h, _)| h.clone())
            .collect();
        v.sort();
        v
    }

    fn bind(&self, hostnqn: &str, vm: VmId) {
        let mut g = self.lock();
        let old = g.hosts.insert(hostnqn.to_string(), vm);
        if let Some(old) = old.filter(|&o| o != vm) {
            forget_unused_views(&mut g, old);
        }
    }

    fn unbind(&self, hostnqn: &str) -> bool {
        let mut g = self.lock();
        match g.hosts.remove(hostnqn) {
            Some(old) => {
                forget_unused_views(&mut g, old);
                true
            }
            None => false,
        }
    }
}

/// Drops the views of `vm` once no host is bound to it (it may then be deleted).
fn forget_unused_views(g: &mut Inner, vm: VmId) {
    if !g.hosts.values().any(|&x| x == vm) {
        g.views.retain(|(_, x), _| *x != vm);
    }
}

impl nvmf_target::AdmissionFactory for HostBindings {
    fn for_queue(&self, q: &nvmf_target::QueueInfo) -> nvmf_target::QueueAdmission {
        nvmf_target::PassThroughFactory.for_queue(q)
    }

    fn device_for(&self, hostnqn: &str, dev: &Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        let mut g = self.lock();
        let Some(&vm) = g.hosts.get(hostnqn) else {
            return dev.clone();
        };
        let name = dev.info().name.clone();
        let Some(vol) = g.volumes.get(&name).cloned() else {
            return dev.clone();
        };
        let same = std::ptr::addr_eq(Arc::as_ptr(&vol), Arc::as_ptr(dev));
        if !same || vol.vm() == vm {
            return dev.clone();
        }
        let key = (name, vm);
        if let Some(v) = g.views.get(&key) {
            return v.clone();
        }
        match self.volumes.view_as(&vol, vm) {
            Ok(view) => {
                let view: Arc<dyn BlockDevice> = view;
                g.views.insert(key, view.clone());
                view
            }
            Err(e) => {
                tracing::warn!(
                    host = hostnqn,
                    volume = %key.0,
                    error = %e,
                    "host's VM cannot use this volume's paths; scheduled as the volume's VM"
                );
                dev.clone()
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bind {
    hostnqn: String,
    vm: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unbind {
    hostnqn: String,
}

/// Binds a host to a VM (config or RPC) after checking both.
pub fn bind(state: &State, b: &HostBinding) -> Result<(), RpcError> {
    b.validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    let vm = state
        .volumes
        .scheduler()
        .vm_id(&b.vm)
        .ok_or_else(|| RpcError::no_device(format!("VM {} does not exist", b.vm)))?;
    state.hosts.bind(&b.nqn, vm);
    state.nvmf.refresh_routes();
    tracing::info!(host = %b.nqn, vm = %b.vm, "host bound to VM");
    Ok(())
}

/// Handles the methods of this module; `None` if `method` is not one of them.
pub fn call(state: &State, method: &str, params: Option<Value>) -> Option<Result<Value, RpcError>> {
    Some(match method {
        "vm_bind_host" => (|| {
            let p: Bind = parse_params(params)?;
            let b = HostBinding {
                nqn: p.hostnqn,
                vm: p.vm,
            };
            bind(state, &b)?;
            let mut cfg = state.config.lock().expect("config");
            cfg.hosts.retain(|h| h.nqn != b.nqn);
            cfg.hosts.push(b);
            Ok(Value::Bool(true))
        })(),
        "vm_unbind_host" => (|| {
            let p: Unbind = parse_params(params)?;
            if !state.hosts.unbind(&p.hostnqn) {
                return Err(RpcError::no_device(format!(
                    "host {} is not bound to a VM",
                    p.hostnqn
                )));
            }
            state.nvmf.refresh_routes();
            state
                .config
                .lock()
                .expect("config")
                .hosts
                .retain(|h| h.nqn != p.hostnqn);
            Ok(Value::Bool(true))
        })(),
        "vm_get_hosts" => (|| {
            crate::rpc::no_params(&params)?;
            let cfg = state.config.lock().expect("config");
            Ok(json!(cfg
                .hosts
                .iter()
                .map(|h| json!({"hostnqn": h.nqn, "vm": h.vm}))
                .collect::<Vec<_>>()))
        })(),
        _ => return None,
    })
}
