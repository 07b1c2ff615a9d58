//! NVM subsystems (NVMe Base 2.0 §1.5, NVMe-oF 1.1 §1.5): NQN, serial and model number,
//! namespaces backed by block devices, the hosts allowed to connect, the portals (listeners)
//! through which it is reachable and, per listener, the ANA state of each ANA group
//! (Base 2.0 §8.1 "Asymmetric Namespace Access Reporting").
//!
//! A [`Subsystem`] is changed by the management plane under its mutex. The data path never
//! takes that lock per I/O: every change bumps a generation counter and publishes an
//! immutable [`Snapshot`]; queue pairs compare the generation once per poll and pick up the
//! new snapshot when it moved.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nvme_spec::bytes::NQN_MAX_LEN;
use nvme_spec::features::AsyncEvent;
use nvme_spec::AnaState;
use vmpath_bdev::BlockDevice;

use crate::ctrlr::Controller;

/// Errors of subsystem management. Each names the object and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubsystemError {
    /// A parameter is invalid.
    #[error("invalid {field}: {msg}")]
    Invalid {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The NSID is in use.
    #[error("namespace {nsid} already exists in {nqn}")]
    NsidInUse {
        /// Subsystem.
        nqn: String,
        /// NSID.
        nsid: u32,
    },
    /// No namespace with that NSID.
    #[error("namespace {nsid} does not exist in {nqn}")]
    NoSuchNamespace {
        /// Subsystem.
        nqn: String,
        /// NSID.
        nsid: u32,
    },
    /// All NSIDs are in use.
    #[error("subsystem {0} has no free namespace ID")]
    NoFreeNsid(String),
    /// The listener exists.
    #[error("subsystem {nqn} already listens on {addr}")]
    ListenerExists {
        /// Subsystem.
        nqn: String,
        /// Portal.
        addr: String,
    },
    /// No such listener.
    #[error("subsystem {nqn} does not listen on {addr}")]
    NoSuchListener {
        /// Subsystem.
        nqn: String,
        /// Portal.
        addr: String,
    },
    /// The host is already allowed.
    #[error("host {host} is already allowed on {nqn}")]
    HostExists {
        /// Subsystem.
        nqn: String,
        /// Host NQN.
        host: String,
    },
    /// The host is not in the allow list.
    #[error("host {host} is not in the allow list of {nqn}")]
    NoSuchHost {
        /// Subsystem.
        nqn: String,
        /// Host NQN.
        host: String,
    },
}

fn invalid(field: &'static str, msg: impl Into<String>) -> SubsystemError {
    SubsystemError::Invalid {
        field,
        msg: msg.into(),
    }
}

/// Checks an NQN: `nqn.yyyy-mm.reverse-domain[:string]` or the `nqn.2014-08.org.nvmexpress:uuid:`
/// form, at most 223 bytes, no NUL or whitespace (Base 2.0 §4.5).
pub fn validate_nqn(nqn: &str) -> Result<(), SubsystemError> {
    if nqn.len() > NQN_MAX_LEN {
        return Err(invalid(
            "nqn",
            format!("{} bytes is longer than {NQN_MAX_LEN}", nqn.len()),
        ));
    }
    if nqn.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "nqn",
            format!("{nqn:?} contains whitespace or control characters"),
        ));
    }
    let b = nqn.as_bytes();
    let date_ok = b.len() > 12
        && nqn.starts_with("nqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.';
    if !date_ok {
        return Err(invalid(
            "nqn",
            format!("{nqn:?} is not of the form nqn.yyyy-mm.reverse-domain:name"),
        ));
    }
    Ok(())
}

/// An NVMe/TCP portal: transport address and service id as in SPDK's `listen_address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenAddr {
    /// IP address (`traddr`).
    pub traddr: String,
    /// TCP port as text (`trsvcid`); `"0"` asks the kernel for a free port when listening.
    pub trsvcid: String,
}

impl ListenAddr {
    /// A portal from an address and a port.
    pub fn new(traddr: impl Into<String>, trsvcid: impl Into<String>) -> Self {
        ListenAddr {
            traddr: traddr.into(),
            trsvcid: trsvcid.into(),
        }
    }

    /// The portal of a bound socket address.
    pub fn from_socket_addr(a: SocketAddr) -> Self {
        ListenAddr::new(a.ip().to_string(), a.port().to_string())
    }

    /// Parses into a socket address.
    pub fn socket_addr(&self) -> Result<SocketAddr, SubsystemError> {
        let ip: IpAddr = self
            .traddr
            .parse()
            .map_err(|_| invalid("traddr", format!("{:?} is not an IP address", self.traddr)))?;
        let port: u16 = self
            .trsvcid
            .parse()
            .map_err(|_| invalid("trsvcid", format!("{:?} is not a TCP port", self.trsvcid)))?;
        Ok(SocketAddr::new(ip, port))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.traddr, self.trsvcid)
    }
}

/// ANA state name as used by SPDK's RPCs (`optimized`, `non_optimized`, `inaccessible`).
pub fn ana_state_name(s: AnaState) -> &'static str {
    match s {
        AnaState::Optimized => "optimized",
        AnaState::NonOptimized => "non_optimized",
        AnaState::Inaccessible => "inaccessible",
        AnaState::PersistentLoss => "persistent_loss",
        AnaState::Change => "change",
    }
}

/// Parses an ANA state name (see [`ana_state_name`]); only the three states a listener can be
/// set to are accepted.
pub fn parse_ana_state(s: &str) -> Result<AnaState, SubsystemError> {
    match s {
        "optimized" => Ok(AnaState::Optimized),
        "non_optimized" | "non-optimized" => Ok(AnaState::NonOptimized),
        "inaccessible" => Ok(AnaState::Inaccessible),
        other => Err(invalid(
            "ana_state",
            format!("{other:?} is not one of optimized, non_optimized, inaccessible"),
        )),
    }
}

/// Parameters of a new subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemParams {
    /// NVMe Qualified Name.
    pub nqn: String,
    /// Serial number (ASCII, at most 20 bytes).
    pub serial: String,
    /// Model number (ASCII, at most 40 bytes).
    pub model: String,
    /// Any host may connect (else only those in `hosts`).
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect.
    pub hosts: Vec<String>,
}

impl SubsystemParams {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), SubsystemError> {
        validate_nqn(&self.nqn)?;
        if self.nqn == nvme_spec::DISCOVERY_NQN {
            return Err(invalid("nqn", "the discovery NQN is reserved"));
        }
        let ascii = |field, s: &str, max: usize| {
            if s.len() > max || !s.bytes().all(|c| (0x20..0x7f).contains(&c)) {
                Err(invalid(
                    field,
                    format!("{s:?} must be printable ASCII of at most {max} bytes"),
                ))
            } else {
                Ok(())
            }
        };
        ascii("serial_number", &self.serial, 20)?;
        ascii("model_number", &self.model, 40)?;
        for h in &self.hosts {
            validate_nqn(h).map_err(|e| match e {
                SubsystemError::Invalid { msg, .. } => invalid("host", msg),
                other => other,
            })?;
        }
        Ok(())
    }
}

/// Parameters of a namespace to add.
#[derive(Debug, Clone)]
pub struct NamespaceParams {
    /// The block device.
    pub bdev: Arc<dyn BlockDevice>,
    /// NSID; `None` takes the lowest free one.
    pub nsid: Option<u32>,
    /// ANA group; `None` uses the NSID.
    pub anagrpid: Option<u32>,
}

/// One namespace of a subsystem.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// NSID.
    pub nsid: u32,
    /// The block device.
    pub bdev: Arc<dyn BlockDevice>,
    /// ANA group.
    pub anagrpid: u32,
}

/// A listener of a subsystem with its ANA states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The portal (with the port actually bound).
    pub addr: ListenAddr,
    /// The socket address bound.
    pub sock: SocketAddr,
    /// State of ANA groups without an explicit entry.
    pub default_ana: AnaState,
    /// Explicit per-group states.
    pub ana: BTreeMap<u32, AnaState>,
}

impl Listener {
    /// The state of ANA group `grp` through this listener.
    pub fn ana_state(&self, grp: u32) -> AnaState {
        self.ana.get(&grp).copied().unwrap_or(self.default_ana)
    }
}

/// What queue pairs see of a subsystem: namespaces and listener ANA states at one generation.
#[derive(Debug)]
pub struct Snapshot {
    /// Generation this snapshot belongs to.
    pub gen: u64,
    /// Namespaces sorted by NSID.
    pub namespaces: Vec<Namespace>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// ANA log change count.
    pub ana_change_count: u64,
}

impl Snapshot {
    /// The namespace `nsid`.
    pub fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespaces
            .binary_search_by_key(&nsid, |n| n.nsid)
            .ok()
            .map(|i| &self.namespaces[i])
    }

    /// The listener bound to `sock`.
    pub fn listener(&self, sock: SocketAddr) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.sock == sock)
    }

    /// ANA state of `grp` through the listener bound to `sock` (inaccessible if the listener
    /// is gone).
    pub fn ana_state(&self, sock: SocketAddr, grp: u32) -> AnaState {
        self.listener(sock)
            .map(|l| l.ana_state(grp))
            .unwrap_or(AnaState::Inaccessible)
    }

    /// Sorted, distinct ANA group ids of the namespaces.
    pub fn ana_groups(&self) -> Vec<u32> {
        let s: BTreeSet<u32> = self.namespaces.iter().map(|n| n.anagrpid).collect();
        s.into_iter().collect()
    }
}

pub(crate) struct SubsysState {
    pub(crate) namespaces: BTreeMap<u32, Namespace>,
    pub(crate) allow_any_host: bool,
    pub(crate) hosts: BTreeSet<String>,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) controllers: Vec<Arc<Controller>>,
    next_cntlid: u16,
    ana_change_count: u64,
}

/// An NVM subsystem. Shared (`Arc`) between the management plane and the queue pairs.
pub struct Subsystem {
    nqn: String,
    serial: String,
    model: String,
    max_namespaces: u32,
    state: Mutex<SubsysState>,
    gen: AtomicU64,
    snapshot: Mutex<Arc<Snapshot>>,
    deleted: AtomicBool,
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem")
            .field("nqn", &self.nqn)
            .finish_non_exhaustive()
    }
}

/// A summary of a subsystem for `nvmf_get_subsystems`.
#[derive(Debug, Clone)]
pub struct SubsystemInfo {
    /// NQN.
    pub nqn: String,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Whether any host may connect.
    pub allow_any_host: bool,
    /// Allowed hosts.
    pub hosts: Vec<String>,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Live controllers: (cntlid, host NQN, number of I/O queues).
    pub controllers: Vec<(u16, String, usize)>,
}

impl Subsystem {
    pub(crate) fn new(p: &SubsystemParams, max_namespaces: u32) -> Subsystem {
        let state = SubsysState {
            namespaces: BTreeMap::new(),
            allow_any_host: p.allow_any_host,
            hosts: p.hosts.iter().cloned().collect(),
            listeners: Vec::new(),
            controllers: Vec::new(),
            next_cntlid: 1,
            ana_change_count: 0,
        };
        let s = Subsystem {
            nqn: p.nqn.clone(),
            serial: p.serial.clone(),
            model: p.model.clone(),
            max_namespaces,
            state: Mutex::new(state),
            gen: AtomicU64::new(0),
            snapshot: Mutex::new(Arc::new(Snapshot {
                gen: 0,
                namespaces: Vec::new(),
                listeners: Vec::new(),
                ana_change_count: 0,
            })),
            deleted: AtomicBool::new(false),
        };
        s.publish(&s.lock());
        s
    }

    /// The NQN.
    pub fn nqn(&self) -> &str {
        &self.nqn
    }

    /// Serial number.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Model number.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SubsysState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current generation (changes whenever namespaces or listener states change).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.gen.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Publishes the same content at a new generation, so that queue pairs rebuild their
    /// routes (see [`crate::Target::refresh_routes`]).
    pub(crate) fn touch(&self) {
        let st = self.lock();
        self.publish(&st);
    }

    /// Rebuilds and publishes the snapshot; call with the state lock held after a change.
    fn publish(&self, st: &SubsysState) {
        let mut snap = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let gen = snap.gen + 1;
        *snap = Arc::new(Snapshot {
            gen,
            namespaces: st.namespaces.values().cloned().collect(),
            listeners: st.listeners.clone(),
            ana_change_count: st.ana_change_count,
        });
        self.gen.store(gen, Ordering::Release);
    }

    /// Whether `host` may connect.
    pub fn host_allowed(&self, host: &str) -> bool {
        let st = self.lock();
        st.allow_any_host || st.hosts.contains(host)
    }

    /// Whether the subsystem listens on `sock`.
    pub fn listens_on(&self, sock: SocketAddr) -> bool {
        self.lock().listeners.iter().any(|l| l.sock == sock)
    }

    /// A summary of the subsystem.
    pub fn info(&self) -> SubsystemInfo {
        let st = self.lock();
        SubsystemInfo {
            nqn: self.nqn.clone(),
            serial: self.serial.clone(),
            model: self.model.clone(),
            allow_any_host: st.allow_any_host,
            hosts: st.hosts.iter().cloned().collect(),
            namespaces: st.namespaces.values().cloned().collect(),
            listeners: st.listeners.clone(),
            controllers: st
                .controllers
                .iter()
                .map(|c| (c.cntlid(), c.hostnqn().to_string(), c.io_queue_count()))
                .collect(),
        }
    }

    pub(crate) fn add_namespace(&self, p: NamespaceParams) -> Result<u32, SubsystemError> {
        let mut st = self.lock();
        let nsid = match p.nsid {
            Some(0) | None => (1..=self.max_namespaces)
                .find(|n| !st.namespaces.contains_key(n))
                .ok_or_else(|| SubsystemError::NoFreeNsid(self.nqn.clone()))?,
            Some(n) if n > self.max_namespaces || n == u32::MAX => {
                return Err(invalid(
                    "nsid",
                    format!("{n} is above the maximum {}", self.max_namespaces),
                ))
            }
            Some(n) => {
                if st.namespaces.contains_key(&n) {
                    return Err(SubsystemError::NsidInUse {
                        nqn: self.nqn.clone(),
                        nsid: n,
                    });
                }
                n
            }
        };
        let anagrpid = p.anagrpid.unwrap_or(nsid);
        if anagrpid == 0 || anagrpid > self.max_namespaces {
            return Err(invalid(
                "anagrpid",
                format!("{anagrpid} is not in 1..={}", self.max_namespaces),
            ));
        }
        st.namespaces.insert(
            nsid,
            Namespace {
                nsid,
                bdev: p.bdev,
                anagrpid,
            },
        );
        self.publish(&st);
        for c in &st.controllers {
            c.namespace_changed(nsid);
        }
        Ok(nsid)
    }

    pub(crate) fn remove_namespace(&self, nsid: u32) -> Result<Namespace, SubsystemError> {
        let mut st = self.lock();
        let ns = st
            .namespaces
            .remove(&nsid)
            .ok_or_else(|| SubsystemError::NoSuchNamespace {
                nqn: self.nqn.clone(),
                nsid,
            })?;
        self.publish(&st);
        for c in &st.controllers {
            c.namespace_changed(nsid);
        }
        Ok(ns)
    }

    pub(crate) fn add_listener(
        &self,
        addr: ListenAddr,
        sock: SocketAddr,
        ana: AnaState,
    ) -> Result<(), SubsystemError> {
        let mut st = self.lock();
        if st.listeners.iter().any(|l| l.sock == sock) {
            return Err(SubsystemError::ListenerExists {
                nqn: self.nqn.clone(),
                addr: addr.to_string(),
            });
        }
        st.listeners.push(Listener {
            addr,
            sock,
            default_ana: ana,
            ana: BTreeMap::new(),
        });
        self.publish(&st);
        Ok(())
    }

    pub(crate) fn remove_listener(&self, sock: SocketAddr) -> Result<Listener, SubsystemError> {
        let mut st = self.lock();
        let i = st
            .listeners
            .iter()
            .position(|l| l.sock == sock)
            .ok_or_else(|| SubsystemError::NoSuchListener {
                nqn: self.nqn.clone(),
                addr: sock.to_string(),
            })?;
        let l = st.listeners.remove(i);
        self.publish(&st);
        // Controllers associated through that portal lose their path.
        for c in &st.controllers {
            if c.port() == sock {
                c.fail("listener removed");
            }
        }
        Ok(l)
    }

    /// Sets the ANA state of `grp` (or of every group when `None`) on the listener bound to
    /// `sock`, and raises an ANA change notice on the controllers associated through it.
    pub(crate) fn set_ana_state(
        &self,
        sock: SocketAddr,
        grp: Option<u32>,
        state: AnaState,
    ) -> Result<(), SubsystemError> {
        let mut st = self.lock();
        let max = self.max_namespaces;
        let l = st
            .listeners
            .iter_mut()
            .find(|l| l.sock == sock)
            .ok_or_else(|| SubsystemError::NoSuchListener {
                nqn: self.nqn.clone(),
                addr: sock.to_string(),
            })?;
        let changed = match grp {
            Some(g) if g == 0 || g > max => {
                return Err(invalid("anagrpid", format!("{g} is not in 1..={max}")));
            }
            Some(g) => {
                let before = l.ana_state(g);
                if state == l.default_ana {
                    l.ana.remove(&g);
                } else {
                    l.ana.insert(g, state);
                }
                before != state
            }
            None => {
                let changed = l.default_ana != state || l.ana.values().any(|s| *s != state);
                l.default_ana = state;
                l.ana.clear();
                changed
            }
        };
        if changed {
            st.ana_change_count += 1;
            self.publish(&st);
            for c in &st.controllers {
                if c.port() == sock {
                    c.raise(AsyncEvent::ANA_CHANGE);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn add_host(&self, host: &str) -> Result<(), SubsystemError> {
        validate_nqn(host).map_err(|e| match e {
            SubsystemError::Invalid { msg, .. } => invalid("host", msg),
            other => other,
        })?;
        let mut st = self.lock();
        if !st.hosts.insert(host.to_string()) {
            return Err(SubsystemError::HostExists {
                nqn: self.nqn.clone(),
                host: host.to_string(),
            });
        }
        Ok(())
    }

    pub(crate) fn remove_host(&self, host: &str) -> Result<(), SubsystemError> {
        let mut st = self.lock();
        if !st.hosts.remove(host) {
            return Err(SubsystemError::NoSuchHost {
                nqn: self.nqn.clone(),
                host: host.to_string(),
            });
        }
        // SPDK disconnects the removed host's controllers unless any host may connect.
        if !st.allow_any_host {
            for c in &st.controllers {
                if c.hostnqn() == host {
                    c.fail("host removed from the allow list");
                }
            }
        }
        Ok(())
    }

    pub(crate) fn set_allow_any_host(&self, allow: bool) {
        self.lock().allow_any_host = allow;
    }

    /// Registers a new controller and returns its controller id, or `None` if all ids are used.
    pub(crate) fn alloc_cntlid(&self, st: &mut SubsysState) -> Option<u16> {
        // Dynamic controller model: ids 1..=0xffef (Base 2.0 §5.17.2.1, CNTLID).
        for _ in 0..0xffef {
            let id = st.next_cntlid;
            st.next_cntlid = if id >= 0xffef { 1 } else { id + 1 };
            if !st.controllers.iter().any(|c| c.cntlid() == id) {
                return Some(id);
            }
        }
        None
    }

    pub(crate) fn find_controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.lock()
            .controllers
            .iter()
            .find(|c| c.cntlid() == cntlid)
            .cloned()
    }

    pub(crate) fn remove_controller(&self, cntlid: u16) {
        self.lock().controllers.retain(|c| c.cntlid() != cntlid);
    }

    pub(crate) fn fail_all_controllers(&self, why: &'static str) {
        let ctrls: Vec<_> = self.lock().controllers.drain(..).collect();
        for c in ctrls {
            c.fail(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmpath_bdev::null::NullBdev;

    fn params() -> SubsystemParams {
        SubsystemParams {
            nqn: "nqn.2016-06.io.vmpath:t1".into(),
            serial: "SN1".into(),
            model: "vmpath".into(),
            allow_any_host: false,
            hosts: vec!["nqn.2014-08.org.nvmexpress:uuid:h1".into()],
        }
    }

    #[test]
    fn nqn_and_params_validation() {
        assert!(validate_nqn("nqn.2016-06.io.vmpath:cnode1").is_ok());
        assert!(validate_nqn("nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1").is_ok());
        assert!(validate_nqn("iqn.2016-06.io.x").is_err());
        assert!(validate_nqn("nqn.16-06.io.x").is_err());
        assert!(validate_nqn(&format!("nqn.2016-06.{}", "x".repeat(220))).is_err());
        assert!(validate_nqn("nqn.2016-06.io.x y").is_err());
        params().validate().unwrap();
        let mut p = params();
        p.serial = "x".repeat(21);
        assert!(matches!(
            p.validate(),
            Err(SubsystemError::Invalid {
                field: "serial_number",
                ..
            })
        ));
        let mut p = params();
        p.nqn = nvme_spec::DISCOVERY_NQN.into();
        assert!(p.validate().is_err());
        assert_eq!(
            parse_ana_state("inaccessible").unwrap(),
            AnaState::Inaccessible
        );
        assert!(parse_ana_state("sideways").is_err());
    }

    #[test]
    fn namespaces_listeners_ana_and_generations() {
        let s = Subsystem::new(&params(), 16);
        let g0 = s.generation();
        let dev: Arc<dyn BlockDevice> =
            Arc::new(NullBdev::new("n0", 1024, 512, Default::default()).unwrap());
        let n1 = s
            .add_namespace(NamespaceParams {
                bdev: dev.clone(),
                nsid: None,
                anagrpid: None,
            })
            .unwrap();
        assert_eq!(n1, 1);
        let n5 = s
            .add_namespace(NamespaceParams {
                bdev: dev.clone(),
                nsid: Some(5),
                anagrpid: Some(2),
            })
            .unwrap();
        assert_eq!(n5, 5);
        assert!(matches!(
            s.add_namespace(NamespaceParams {
                bdev: dev.clone(),
                nsid: Some(5),
                anagrpid: None
            }),
            Err(SubsystemError::NsidInUse { nsid: 5, .. })
        ));
        assert!(s
            .add_namespace(NamespaceParams {
                bdev: dev.clone(),
                nsid: Some(17),
                anagrpid: None
            })
            .is_err());
        assert!(s.generation() > g0);
        let sock: SocketAddr = "127.0.0.1:4420".parse().unwrap();
        s.add_listener(
            ListenAddr::from_socket_addr(sock),
            sock,
            AnaState::Optimized,
        )
        .unwrap();
        assert!(s
            .add_listener(
                ListenAddr::from_socket_addr(sock),
                sock,
                AnaState::Optimized
            )
            .is_err());
        s.set_ana_state(sock, Some(2), AnaState::Inaccessible)
            .unwrap();
        let snap = s.snapshot();
        assert_eq!(snap.ana_state(sock, 1), AnaState::Optimized);
        assert_eq!(snap.ana_state(sock, 2), AnaState::Inaccessible);
        assert_eq!(snap.ana_change_count, 1);
        assert_eq!(snap.ana_groups(), vec![1, 2]);
        assert_eq!(snap.namespace(5).unwrap().anagrpid, 2);
        s.set_ana_state(sock, None, AnaState::NonOptimized).unwrap();
        let snap = s.snapshot();
        assert_eq!(snap.ana_state(sock, 2), AnaState::NonOptimized);
        assert_eq!(snap.ana_change_count, 2);
        // Setting the same state again is not a change.
        s.set_ana_state(sock, None, AnaState::NonOptimized).unwrap();
        assert_eq!(s.snapshot().ana_change_count, 2);
        s.remove_namespace(1).unwrap();
        assert!(s.remove_namespace(1).is_err());
        assert!(s.snapshot().namespace(1).is_none());
        assert!(s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:h1"));
        assert!(!s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:h2"));
        s.add_host("nqn.2014-08.org.nvmexpress:uuid:h2").unwrap();
        assert!(s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:h2"));
        assert!(s.add_host("nqn.2014-08.org.nvmexpress:uuid:h2").is_err());
        s.remove_host("nqn.2014-08.org.nvmexpress:uuid:h2").unwrap();
        assert!(!s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:h2"));
        s.set_allow_any_host(true);
        assert!(s.host_allowed("nqn.2014-08.org.nvmexpress:uuid:h2"));
        s.remove_listener(sock).unwrap();
        assert_eq!(s.snapshot().ana_state(sock, 1), AnaState::Inaccessible);
    }
}
