//! [`NvmeHost`]: the management side — attach and detach controllers, build multipath
//! namespaces from the namespaces they report, list controllers and paths, set options,
//! subscribe to path events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::Serialize;
use vmpath_bdev::BdevInfo;

use crate::ctrlr::{self, Ctrl, CtrlError, CtrlState, NsData};
use crate::events::{EventCallback, EventHub, PathEvent};
use crate::mpath::{MultipathNs, NsError};
use crate::options::{
    default_hostnqn, AttachParams, CtrlOptions, MultipathMode, OptionsError, PolicyKind, Trid,
};
use crate::path::{PathId, PathKind, PathSnapshot};

/// Errors of host operations.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Bad parameters.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The controller could not be connected or used.
    #[error(transparent)]
    Ctrl(#[from] CtrlError),
    /// The namespaces do not fit the existing multipath namespaces.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// A controller of that name exists and `multipath` is `disable`, or the same path is
    /// attached twice.
    #[error("{0}")]
    Exists(String),
    /// No such controller or namespace.
    #[error("{0}")]
    NotFound(String),
    /// The controller has no usable namespace.
    #[error("controller {0} reports no namespace")]
    NoNamespaces(String),
    /// A thread could not be started.
    #[error("starting the controller thread: {0}")]
    Spawn(String),
}

struct CtrlEntry {
    ctrl: Arc<Ctrl>,
    multipath: MultipathMode,
    thread: Option<JoinHandle<()>>,
    paths: Vec<(String, PathId)>,
}

/// A controller as listed by `bdev_nvme_get_controllers`.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerInfo {
    /// Group name.
    pub name: String,
    /// Transport id.
    pub trid: Trid,
    /// Host NQN.
    pub hostnqn: String,
    /// State (`connecting`, `enabled`, `resetting`, `failed`).
    pub state: String,
    /// Controller id of the live association.
    pub cntlid: Option<u16>,
    /// Serial number.
    pub serial_number: String,
    /// Model number.
    pub model_number: String,
    /// Firmware revision.
    pub firmware_revision: String,
    /// Resets after failures.
    pub resets: u64,
    /// Multipath mode of the group.
    pub multipath: String,
    /// Options in force.
    pub options: CtrlOptions,
    /// Namespaces (bdev names) this controller is a path of.
    pub bdevs: Vec<String>,
}

/// What an attach created.
#[derive(Debug, Clone)]
pub struct Attached {
    /// Every namespace (bdev) the controller is a path of.
    pub bdevs: Vec<String>,
    /// The namespaces that did not exist before (to register as bdevs).
    pub created: Vec<Arc<MultipathNs>>,
}

struct Inner {
    events: Arc<EventHub>,
    ctrls: Mutex<Vec<CtrlEntry>>,
    namespaces: Mutex<BTreeMap<String, Arc<MultipathNs>>>,
    defaults: Mutex<CtrlOptions>,
    policy: Mutex<PolicyKind>,
    hostnqn: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let entries = std::mem::take(&mut *self.ctrls.lock().expect("ctrl lock"));
        stop_all(entries);
    }
}

fn stop_all(entries: Vec<CtrlEntry>) {
    for e in &entries {
        e.ctrl.stop();
    }
    for mut e in entries {
        if let Some(t) = e.thread.take() {
            let _ = t.join();
        }
    }
}

/// The NVMe/TCP host: controllers, multipath namespaces, events. Cheap to clone.
#[derive(Clone)]
pub struct NvmeHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NvmeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeHost")
            .field("hostnqn", &self.inner.hostnqn)
            .finish_non_exhaustive()
    }
}

impl Default for NvmeHost {
    fn default() -> Self {
        NvmeHost::new(None)
    }
}

impl NvmeHost {
    /// A host with the given default host NQN (None: derived from the host name).
    pub fn new(hostnqn: Option<String>) -> NvmeHost {
        NvmeHost {
            inner: Arc::new(Inner {
                events: Arc::new(EventHub::new()),
                ctrls: Mutex::new(Vec::new()),
                namespaces: Mutex::new(BTreeMap::new()),
                defaults: Mutex::new(CtrlOptions::default()),
                policy: Mutex::new(PolicyKind::default()),
                hostnqn: hostnqn.unwrap_or_else(default_hostnqn),
            }),
        }
    }

    /// The default host NQN.
    pub fn hostnqn(&self) -> &str {
        &self.inner.hostnqn
    }

    /// The event hub (subscribe, callbacks).
    pub fn events(&self) -> &Arc<EventHub> {
        &self.inner.events
    }

    /// A bounded channel of path events from now on.
    pub fn subscribe(&self, capacity: usize) -> std::sync::mpsc::Receiver<PathEvent> {
        self.inner.events.subscribe(capacity)
    }

    /// Calls `f` for every path event from now on.
    pub fn on_event(&self, f: EventCallback) {
        self.inner.events.on_event(f)
    }

    /// Options used by attaches that do not give their own.
    pub fn default_options(&self) -> CtrlOptions {
        *self.inner.defaults.lock().expect("defaults lock")
    }

    /// Sets the default options (`bdev_nvme_set_options`); with `name`, also applies them to
    /// the existing controllers of that group.
    pub fn set_options(&self, opts: CtrlOptions, name: Option<&str>) -> Result<(), HostError> {
        opts.validate()?;
        match name {
            None => *self.inner.defaults.lock().expect("defaults lock") = opts,
            Some(n) => {
                let ctrls = self.inner.ctrls.lock().expect("ctrl lock");
                let mut found = false;
                for e in ctrls.iter().filter(|e| e.ctrl.name() == n) {
                    e.ctrl.set_options(opts);
                    found = true;
                }
                if !found {
                    return Err(HostError::NotFound(format!("no controller named {n}")));
                }
            }
        }
        Ok(())
    }

    /// Changes options in place: the defaults (`name` None) or each controller of group
    /// `name` (only the fields `f` sets change; each controller keeps its others).
    pub fn update_options(
        &self,
        name: Option<&str>,
        f: &dyn Fn(&mut CtrlOptions),
    ) -> Result<(), HostError> {
        match name {
            None => {
                let mut d = self.inner.defaults.lock().expect("defaults lock");
                let mut o = *d;
                f(&mut o);
                o.validate()?;
                *d = o;
            }
            Some(n) => {
                let ctrls = self.controller(n);
                if ctrls.is_empty() {
                    return Err(HostError::NotFound(format!("no controller named {n}")));
                }
                let mut new = Vec::new();
                for c in &ctrls {
                    let mut o = c.options();
                    f(&mut o);
                    o.validate()?;
                    new.push(o);
                }
                for (c, o) in ctrls.iter().zip(new) {
                    c.set_options(o);
                }
            }
        }
        Ok(())
    }

    /// The policy new multipath-mode namespaces start with.
    pub fn set_default_policy(&self, p: PolicyKind) {
        *self.inner.policy.lock().expect("policy lock") = p;
    }

    /// Attaches a controller (blocking until it is connected and identified): its namespaces
    /// become multipath namespaces `{name}n{nsid}`, or new paths of the group's existing ones
    /// when their NGUID / EUI-64 / UUID match.
    pub fn attach_controller(&self, p: &AttachParams) -> Result<Attached, HostError> {
        p.validate()?;
        {
            let ctrls = self.inner.ctrls.lock().expect("ctrl lock");
            let group: Vec<&CtrlEntry> = ctrls.iter().filter(|e| e.ctrl.name() == p.name).collect();
            if let Some(first) = group.first() {
                if p.multipath == MultipathMode::Disable
                    || first.multipath == MultipathMode::Disable
                {
                    return Err(HostError::Exists(format!(
                        "controller {} exists and multipath is disabled",
                        p.name
                    )));
                }
            }
            if group.iter().any(|e| *e.ctrl.trid() == p.trid) {
                return Err(HostError::Exists(format!(
                    "controller {} already has the path {}",
                    p.name, p.trid
                )));
            }
        }
        let hostnqn = p
            .hostnqn
            .clone()
            .unwrap_or_else(|| self.inner.hostnqn.clone());
        let ctrl = Ctrl::new(
            &p.name,
            p.trid.clone(),
            hostnqn,
            p.opts,
            self.inner.events.clone(),
        )?;
        let connected = ctrlr::connect_admin(&ctrl, false)?;
        if connected.namespaces.is_empty() {
            return Err(HostError::NoNamespaces(ctrl.label()));
        }
        let data = connected.data.clone();
        ctrl.set_identity(&data, &connected.namespaces);
        // Match every namespace before changing anything.
        let mut plan: Vec<(NsData, Option<Arc<MultipathNs>>)> = Vec::new();
        {
            let nss = self.inner.namespaces.lock().expect("ns lock");
            for n in &connected.namespaces {
                let id = n.identity();
                let by_id = id.and_then(|id| {
                    nss.values()
                        .find(|ns| {
                            ns.name().starts_with(&format!("{}n", p.name))
                                && ns.identity() == Some(id)
                        })
                        .cloned()
                });
                let bdev = format!("{}n{}", p.name, n.nsid);
                let existing = match by_id {
                    Some(ns) => Some(ns),
                    None => match nss.get(&bdev) {
                        Some(other) => {
                            return Err(NsError::Mismatch {
                                bdev,
                                msg: format!(
                                    "namespace {} of {} has a different identity ({}) than the existing namespace ({})",
                                    n.nsid,
                                    ctrl.label(),
                                    id.map_or("none".into(), |i| i.to_string()),
                                    other.identity().map_or("none".into(), |i| i.to_string()),
                                ),
                            }
                            .into())
                        }
                        None => None,
                    },
                };
                if let Some(ns) = &existing {
                    ns.check_geometry(n.num_blocks, n.block_size)?;
                }
                plan.push((n.clone(), existing));
            }
        }
        let mut created = Vec::new();
        let mut bdevs = Vec::new();
        let mut paths = Vec::new();
        let path_name = format!("{}:{}:{}", p.name, p.trid.traddr, p.trid.trsvcid);
        for (n, existing) in plan {
            let ns = match existing {
                Some(ns) => ns,
                None => {
                    let bdev = format!("{}n{}", p.name, n.nsid);
                    let uuid = match n.identity() {
                        Some(ctrlr::NsIdentity::Nguid(g)) => g,
                        Some(ctrlr::NsIdentity::Uuid(u)) => u,
                        _ if n.uuid != [0; 16] => n.uuid,
                        _ => vmpath_bdev::uuid_from_name(&format!("{}:{}", p.trid.subnqn, n.nsid)),
                    };
                    let max_io_blocks = if data.max_transfer == 0 {
                        65_536
                    } else {
                        (data.max_transfer / n.block_size as u64).clamp(1, 65_536) as u32
                    };
                    let policy = match p.multipath {
                        MultipathMode::Failover => PolicyKind::ActivePassive,
                        _ => *self.inner.policy.lock().expect("policy lock"),
                    };
                    let ns = MultipathNs::new(
                        BdevInfo {
                            name: bdev.clone(),
                            kind: "nvme",
                            block_size: n.block_size,
                            num_blocks: n.num_blocks,
                            buf_align: 1,
                            uuid,
                            max_io_blocks,
                            read_only: false,
                        },
                        n.identity(),
                        policy,
                        self.inner.events.clone(),
                    );
                    self.inner
                        .namespaces
                        .lock()
                        .expect("ns lock")
                        .insert(bdev, ns.clone());
                    created.push(ns.clone());
                    ns
                }
            };
            let path = ns.add_path(
                path_name.clone(),
                PathKind::Remote {
                    ctrl: ctrl.clone(),
                    nsid: n.nsid,
                },
            )?;
            ctrl.add_path(ns.name(), path.clone());
            bdevs.push(ns.name().to_string());
            paths.push((ns.name().to_string(), path.id()));
        }
        let c = ctrl.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nvme-{}", p.name))
            .spawn(move || ctrlr::run(c, connected))
            .map_err(|e| HostError::Spawn(e.to_string()))?;
        self.inner.ctrls.lock().expect("ctrl lock").push(CtrlEntry {
            ctrl,
            multipath: p.multipath,
            thread: Some(thread),
            paths,
        });
        Ok(Attached { bdevs, created })
    }

    /// Detaches the controllers of group `name` (all of them, or the one matching `traddr`
    /// / `trsvcid` / `subnqn` when given). Their paths are removed; namespaces left without
    /// any path are deleted and returned (to unregister them).
    pub fn detach_controller(
        &self,
        name: &str,
        traddr: Option<&str>,
        trsvcid: Option<&str>,
        subnqn: Option<&str>,
    ) -> Result<Vec<String>, HostError> {
        let mut taken = Vec::new();
        {
            let mut ctrls = self.inner.ctrls.lock().expect("ctrl lock");
            let mut i = 0;
            while i < ctrls.len() {
                let t = ctrls[i].ctrl.trid();
                let m = ctrls[i].ctrl.name() == name
                    && traddr.is_none_or(|a| a == t.traddr)
                    && trsvcid.is_none_or(|s| s == t.trsvcid)
                    && subnqn.is_none_or(|n| n == t.subnqn);
                if m {
                    taken.push(ctrls.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        if taken.is_empty() {
            return Err(HostError::NotFound(format!(
                "no controller named {name} matches"
            )));
        }
        let mut removed = Vec::new();
        {
            let mut nss = self.inner.namespaces.lock().expect("ns lock");
            for e in &taken {
                for (bdev, id) in &e.paths {
                    if let Some(ns) = nss.get(bdev) {
                        let _ = ns.remove_path(*id, "controller detached");
                        if ns.live_path_count() == 0 {
                            nss.remove(bdev);
                            removed.push(bdev.clone());
                        }
                    }
                }
            }
        }
        stop_all(taken);
        Ok(removed)
    }

    /// Every controller.
    pub fn controllers(&self) -> Vec<ControllerInfo> {
        self.inner
            .ctrls
            .lock()
            .expect("ctrl lock")
            .iter()
            .map(|e| {
                let d = e.ctrl.data();
                ControllerInfo {
                    name: e.ctrl.name().to_string(),
                    trid: e.ctrl.trid().clone(),
                    hostnqn: e.ctrl.hostnqn().to_string(),
                    state: e.ctrl.state().as_str().to_string(),
                    cntlid: e.ctrl.cntlid(),
                    serial_number: d.sn,
                    model_number: d.mn,
                    firmware_revision: d.fr,
                    resets: e.ctrl.resets(),
                    multipath: e.multipath.as_str().to_string(),
                    options: e.ctrl.options(),
                    bdevs: e.paths.iter().map(|(b, _)| b.clone()).collect(),
                }
            })
            .collect()
    }

    /// The controllers of group `name`.
    pub fn controller(&self, name: &str) -> Vec<Arc<Ctrl>> {
        self.inner
            .ctrls
            .lock()
            .expect("ctrl lock")
            .iter()
            .filter(|e| e.ctrl.name() == name)
            .map(|e| e.ctrl.clone())
            .collect()
    }

    /// True if any controller of group `name` is live.
    pub fn any_live(&self, name: &str) -> bool {
        self.controller(name)
            .iter()
            .any(|c| c.state() == CtrlState::Live)
    }

    /// A multipath namespace by bdev name.
    pub fn namespace(&self, bdev: &str) -> Option<Arc<MultipathNs>> {
        self.inner
            .namespaces
            .lock()
            .expect("ns lock")
            .get(bdev)
            .cloned()
    }

    /// Every multipath namespace.
    pub fn namespaces(&self) -> Vec<Arc<MultipathNs>> {
        self.inner
            .namespaces
            .lock()
            .expect("ns lock")
            .values()
            .cloned()
            .collect()
    }

    /// Paths of one namespace, or of all (`bdev_nvme_get_io_paths`).
    pub fn io_paths(
        &self,
        bdev: Option<&str>,
    ) -> Result<Vec<(String, Vec<PathSnapshot>)>, HostError> {
        let nss = self.inner.namespaces.lock().expect("ns lock");
        match bdev {
            Some(b) => {
                let ns = nss
                    .get(b)
                    .ok_or_else(|| HostError::NotFound(format!("no NVMe bdev named {b}")))?;
                Ok(vec![(b.to_string(), ns.path_snapshots())])
            }
            None => Ok(nss
                .iter()
                .map(|(b, ns)| (b.clone(), ns.path_snapshots()))
                .collect()),
        }
    }

    /// Stops every controller thread (also done when the last clone is dropped).
    pub fn shutdown(&self) {
        let entries = std::mem::take(&mut *self.inner.ctrls.lock().expect("ctrl lock"));
        stop_all(entries);
        self.inner.namespaces.lock().expect("ns lock").clear();
    }
}
