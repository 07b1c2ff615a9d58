//! The target: the set of subsystems and portals, the discovery service, the acceptor that
//! spreads new connections over the reactors, and the management API the JSON-RPC methods
//! (`nvmf_*`) call.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvme_spec::features::AsyncEvent;
use nvme_spec::AnaState;
use vmpath_runtime::{Message, ReactorHandle};

use crate::admission::{AdmissionFactory, PassThroughFactory};
use crate::ctrlr::Controller;
use crate::options::{OptionsError, TargetOptions};
use crate::subsystem::{ListenAddr, NamespaceParams, Subsystem, SubsystemError, SubsystemParams};
use vmpath_runtime::sys::{poll_readable, EventFd};

/// Errors of the target's management API.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Bad target options.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// A subsystem operation failed.
    #[error(transparent)]
    Subsystem(#[from] SubsystemError),
    /// No subsystem of that NQN.
    #[error("subsystem {0} does not exist")]
    NoSuchSubsystem(String),
    /// A subsystem of that NQN exists.
    #[error("subsystem {0} already exists")]
    SubsystemExists(String),
    /// A portal could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The portal.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The acceptor thread could not be started.
    #[error("cannot start the NVMe/TCP acceptor: {0}")]
    Acceptor(#[source] io::Error),
    /// No reactors to run connections on.
    #[error("the target needs at least one reactor")]
    NoReactors,
    /// The target is shutting down.
    #[error("the target is shutting down")]
    Stopped,
}

/// Counts a live connection; dropping it (with the connection) decrements the count.
#[derive(Debug)]
pub(crate) struct ConnTicket(Arc<AtomicUsize>);

impl ConnTicket {
    pub(crate) fn new(counter: &Arc<AtomicUsize>) -> ConnTicket {
        counter.fetch_add(1, Ordering::AcqRel);
        ConnTicket(counter.clone())
    }
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct PortEntry {
    refs: usize,
    portid: u16,
}

enum AcceptCmd {
    Add(SocketAddr, TcpListener),
    /// Close the portal, then say so (the caller waits: a deleted portal is closed when the
    /// management call returns).
    Remove(SocketAddr, std::sync::mpsc::Sender<()>),
    Stop,
}

struct Discovery {
    ctrls: Vec<Arc<Controller>>,
    next_cntlid: u16,
}

/// State shared by the management plane, the acceptor and every connection.
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) opts: TargetOptions,
    reactors: Vec<ReactorHandle>,
    rr: AtomicUsize,
    subsystems: Mutex<BTreeMap<String, Arc<Subsystem>>>,
    ports: Mutex<BTreeMap<SocketAddr, PortEntry>>,
    next_portid: AtomicUsize,
    discovery: Mutex<Discovery>,
    genctr: AtomicU64,
    admission: RwLock<Arc<dyn AdmissionFactory>>,
    pub(crate) stopping: AtomicBool,
    pub(crate) live: Arc<AtomicUsize>,
    cmds: Mutex<Vec<AcceptCmd>>,
    wake: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        lock(&self.subsystems).get(nqn).cloned()
    }

    pub(crate) fn admission(&self) -> Arc<dyn AdmissionFactory> {
        self.admission
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn new_discovery_controller(
        &self,
        hostnqn: String,
        hostid: [u8; 16],
        port: SocketAddr,
        kato: u32,
    ) -> Option<Arc<Controller>> {
        let mut d = lock(&self.discovery);
        let mut id = None;
        for _ in 0..0xffef {
            let c = d.next_cntlid;
            d.next_cntlid = if c >= 0xffef { 1 } else { c + 1 };
            if !d.ctrls.iter().any(|x| x.cntlid() == c) {
                id = Some(c);
                break;
            }
        }
        let ctrl = Arc::new(Controller::new(id?, None, hostnqn, hostid, port, kato, 0));
        d.ctrls.push(ctrl.clone());
        Some(ctrl)
    }

    pub(crate) fn remove_discovery_controller(&self, cntlid: u16) {
        lock(&self.discovery).ctrls.retain(|c| c.cntlid() != cntlid);
    }

    /// The discovery log page for `hostnqn`: one entry per listener of every subsystem the
    /// host may connect to.
    pub(crate) fn discovery_log(&self, hostnqn: &str, out: &mut Vec<u8>) {
        let subs: Vec<Arc<Subsystem>> = lock(&self.subsystems).values().cloned().collect();
        let ports: BTreeMap<SocketAddr, u16> = lock(&self.ports)
            .iter()
            .map(|(a, p)| (*a, p.portid))
            .collect();
        let mut entries = Vec::new();
        for s in subs {
            if !s.host_allowed(hostnqn) {
                continue;
            }
            for l in s.info().listeners {
                let portid = ports.get(&l.sock).copied().unwrap_or(0);
                entries.push(crate::pages::discovery_entry(
                    s.nqn(),
                    &l,
                    portid,
                    self.opts.max_admin_queue_depth,
                ));
            }
        }
        crate::pages::discovery_log(self.genctr.load(Ordering::Acquire), &entries, out);
    }

    /// The discovery log changed: bump the generation and notify discovery controllers.
    fn discovery_changed(&self) {
        self.genctr.fetch_add(1, Ordering::AcqRel);
        for c in lock(&self.discovery).ctrls.iter() {
            c.raise(AsyncEvent::DISCOVERY_LOG_CHANGE);
        }
    }

    fn acceptor_cmd(&self, c: AcceptCmd) {
        lock(&self.cmds).push(c);
        self.wake.signal();
    }

    /// Hands an accepted socket to the next reactor (round robin); if its inbox is full the
    /// next one is tried, and if every one refuses the connection is closed.
    fn dispatch(self: &Arc<Self>, stream: TcpStream, port: SocketAddr) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if self.live.load(Ordering::Acquire) >= self.opts.max_connections {
            tracing::warn!(%port, "connection limit reached, closing new connection");
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let ticket = ConnTicket::new(&self.live);
        let n = self.reactors.len();
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let sh = self.clone();
        let mut msg: Message = Box::new(move |r| {
            crate::group::add_connection(r, sh, stream, port, ticket);
        });
        for k in 0..n {
            match self.reactors[(start + k) % n].send_boxed(msg) {
                Ok(()) => return,
                Err(e) => msg = e.msg,
            }
        }
        tracing::warn!(%port, "no reactor accepted the connection, closing it");
    }
}

impl Shared {
    /// Fresh state: no subsystems, portals or connections.
    fn build(opts: TargetOptions, reactors: Vec<ReactorHandle>) -> std::io::Result<Shared> {
        Ok(Shared {
            id: NEXT_TARGET_ID.fetch_add(1, Ordering::Relaxed),
            opts,
            reactors,
            rr: AtomicUsize::new(0),
            subsystems: Mutex::new(BTreeMap::new()),
            ports: Mutex::new(BTreeMap::new()),
            next_portid: AtomicUsize::new(1),
            discovery: Mutex::new(Discovery {
                ctrls: Vec::new(),
                next_cntlid: 1,
            }),
            genctr: AtomicU64::new(0),
            admission: RwLock::new(Arc::new(PassThroughFactory)),
            stopping: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            cmds: Mutex::new(Vec::new()),
            wake: EventFd::new()?,
        })
    }

    /// Target state without reactors or acceptor thread (fuzzing and unit tests).
    pub(crate) fn standalone(opts: TargetOptions) -> Arc<Shared> {
        Arc::new(Shared::build(opts, Vec::new()).expect("eventfd"))
    }

    /// Adds a subsystem directly (fuzzing and unit tests).
    pub(crate) fn create_subsystem_for_tests(&self, p: &SubsystemParams) -> Arc<Subsystem> {
        let s = Arc::new(Subsystem::new(p, self.opts.max_namespaces));
        lock(&self.subsystems).insert(p.nqn.clone(), s.clone());
        s
    }
}

fn acceptor_loop(shared: Arc<Shared>) {
    let mut listeners: Vec<(SocketAddr, TcpListener)> = Vec::new();
    let mut readable = Vec::new();
    let mut fds = Vec::new();
    loop {
        let cmds = std::mem::take(&mut *lock(&shared.cmds));
        for c in cmds {
            match c {
                AcceptCmd::Add(a, l) => listeners.push((a, l)),
                AcceptCmd::Remove(a, done) => {
                    listeners.retain(|(x, _)| *x != a);
                    let _ = done.send(());
                }
                AcceptCmd::Stop => return,
            }
        }
        fds.clear();
        fds.push(shared.wake.raw());
        fds.extend(listeners.iter().map(|(_, l)| l.as_raw_fd()));
        poll_readable(&fds, 1000, &mut readable);
        if readable.first() == Some(&true) {
            shared.wake.drain();
        }
        for (i, (addr, l)) in listeners.iter().enumerate() {
            if !readable.get(i + 1).copied().unwrap_or(false) {
                continue;
            }
            for _ in 0..64 {
                match l.accept() {
                    Ok((s, peer)) => {
                        tracing::debug!(%peer, port = %addr, "NVMe/TCP connection accepted");
                        shared.dispatch(s, *addr);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(port = %addr, error = %e, "accept failed");
                        break;
                    }
                }
            }
        }
    }
}

static NEXT_TARGET_ID: AtomicU64 = AtomicU64::new(1);

/// An NVMe-over-TCP target running its queue pairs on the given reactors.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use nvmf_target::*;
/// # fn f(reactors: Vec<vmpath_runtime::ReactorHandle>, dev: Arc<dyn vmpath_bdev::BlockDevice>) -> Result<(), TargetError> {
/// let t = Target::new(TargetOptions::default(), reactors)?;
/// let nqn = "nqn.2016-06.io.vmpath:cnode1";
/// t.create_subsystem(SubsystemParams {
///     nqn: nqn.into(), serial: "VMPATH0001".into(), model: "vmpath".into(),
///     allow_any_host: true, hosts: vec![],
/// })?;
/// t.add_namespace(nqn, NamespaceParams { bdev: dev, nsid: None, anagrpid: None })?;
/// t.add_listener(nqn, &ListenAddr::new("127.0.0.1", "4420"), nvme_spec::AnaState::Optimized)?;
/// # Ok(()) }
/// ```
pub struct Target {
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A target with no subsystems, spreading connections over `reactors`.
    pub fn new(opts: TargetOptions, reactors: Vec<ReactorHandle>) -> Result<Target, TargetError> {
        opts.validate()?;
        if reactors.is_empty() {
            return Err(TargetError::NoReactors);
        }
        let shared = Arc::new(Shared::build(opts, reactors).map_err(TargetError::Acceptor)?);
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("nvmf_acceptor".into())
            .spawn(move || acceptor_loop(sh))
            .map_err(TargetError::Acceptor)?;
        Ok(Target {
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &TargetOptions {
        &self.shared.opts
    }

    /// Installs the factory of per-I/O-queue admission hooks (used by queues that connect
    /// from now on).
    pub fn set_admission_factory(&self, f: Arc<dyn AdmissionFactory>) {
        *self
            .shared
            .admission
            .write()
            .unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// Makes every connected I/O queue rebuild its namespace routes on its next poll, asking
    /// the admission factory again which device serves each namespace (after the daemon
    /// changed which VM a host is bound to). Commands already submitted complete on the
    /// devices they went to.
    pub fn refresh_routes(&self) {
        let subs: Vec<Arc<Subsystem>> = lock(&self.shared.subsystems).values().cloned().collect();
        for s in subs {
            s.touch();
        }
    }

    fn check_running(&self) -> Result<(), TargetError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            Err(TargetError::Stopped)
        } else {
            Ok(())
        }
    }

    fn get(&self, nqn: &str) -> Result<Arc<Subsystem>, TargetError> {
        self.shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::NoSuchSubsystem(nqn.to_string()))
    }

    /// Creates a subsystem.
    pub fn create_subsystem(&self, p: SubsystemParams) -> Result<Arc<Subsystem>, TargetError> {
        self.check_running()?;
        p.validate()?;
        let mut subs = lock(&self.shared.subsystems);
        if subs.contains_key(&p.nqn) {
            return Err(TargetError::SubsystemExists(p.nqn));
        }
        let s = Arc::new(Subsystem::new(&p, self.shared.opts.max_namespaces));
        subs.insert(p.nqn.clone(), s.clone());
        drop(subs);
        self.shared.discovery_changed();
        tracing::info!(nqn = %p.nqn, "subsystem created");
        Ok(s)
    }

    /// Deletes a subsystem: its controllers are torn down and its portals released.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), TargetError> {
        let s = lock(&self.shared.subsystems)
            .remove(nqn)
            .ok_or_else(|| TargetError::NoSuchSubsystem(nqn.to_string()))?;
        s.mark_deleted();
        let socks: Vec<SocketAddr> = s.info().listeners.iter().map(|l| l.sock).collect();
        for sock in socks {
            let _ = s.remove_listener(sock);
            self.release_port(sock);
        }
        s.fail_all_controllers("subsystem deleted");
        self.shared.discovery_changed();
        tracing::info!(nqn, "subsystem deleted");
        Ok(())
    }

    /// The subsystem `nqn`.
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.shared.subsystem(nqn)
    }

    /// Every subsystem, sorted by NQN.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        lock(&self.shared.subsystems).values().cloned().collect()
    }

    /// Adds a namespace; returns its NSID. Connected hosts get a namespace attribute notice.
    pub fn add_namespace(&self, nqn: &str, p: NamespaceParams) -> Result<u32, TargetError> {
        self.check_running()?;
        Ok(self.get(nqn)?.add_namespace(p)?)
    }

    /// Removes a namespace. I/O already at the device completes; new I/O to the NSID fails
    /// with Invalid Namespace.
    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        self.get(nqn)?.remove_namespace(nsid)?;
        Ok(())
    }

    /// Makes the subsystem reachable through a portal (opening it if no other subsystem
    /// uses it). A port of 0 picks a free port; the returned address has the real one.
    pub fn add_listener(
        &self,
        nqn: &str,
        addr: &ListenAddr,
        ana: AnaState,
    ) -> Result<ListenAddr, TargetError> {
        self.check_running()?;
        let s = self.get(nqn)?;
        let want = addr.socket_addr()?;
        let sock = self.acquire_port(want, addr)?;
        let real = ListenAddr::from_socket_addr(sock);
        if let Err(e) = s.add_listener(real.clone(), sock, ana) {
            self.release_port(sock);
            return Err(e.into());
        }
        self.shared.discovery_changed();
        tracing::info!(nqn, portal = %real, "listener added");
        Ok(real)
    }

    fn acquire_port(&self, want: SocketAddr, addr: &ListenAddr) -> Result<SocketAddr, TargetError> {
        let mut ports = lock(&self.shared.ports);
        if want.port() != 0 {
            if let Some(p) = ports.get_mut(&want) {
                p.refs += 1;
                return Ok(want);
            }
        }
        let l = TcpListener::bind(want).map_err(|source| TargetError::Listen {
            addr: addr.to_string(),
            source,
        })?;
        l.set_nonblocking(true)
            .map_err(|source| TargetError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let sock = l.local_addr().map_err(|source| TargetError::Listen {
            addr: addr.to_string(),
            source,
        })?;
        let portid = self.shared.next_portid.fetch_add(1, Ordering::Relaxed) as u16;
        ports.insert(sock, PortEntry { refs: 1, portid });
        drop(ports);
        self.shared.acceptor_cmd(AcceptCmd::Add(sock, l));
        Ok(sock)
    }

    fn release_port(&self, sock: SocketAddr) {
        let mut ports = lock(&self.shared.ports);
        let close = match ports.get_mut(&sock) {
            Some(p) => {
                p.refs -= 1;
                p.refs == 0
            }
            None => false,
        };
        if close {
            ports.remove(&sock);
            drop(ports);
            let (done, closed) = std::sync::mpsc::channel();
            self.shared.acceptor_cmd(AcceptCmd::Remove(sock, done));
            // The acceptor closes the socket on its next turn (it wakes on the command).
            // The wait is bounded in case the acceptor is gone (after shutdown the port
            // table is empty, so this is not reached then).
            if closed.recv_timeout(Duration::from_secs(2)).is_err() {
                tracing::warn!(portal = %sock, "acceptor did not confirm closing the portal");
            }
        }
    }

    /// Removes a portal from a subsystem: controllers associated through it are torn down,
    /// and the socket is closed when no subsystem uses it any more.
    pub fn remove_listener(&self, nqn: &str, addr: &ListenAddr) -> Result<(), TargetError> {
        let s = self.get(nqn)?;
        let sock = addr.socket_addr()?;
        s.remove_listener(sock)?;
        self.release_port(sock);
        self.shared.discovery_changed();
        tracing::info!(nqn, portal = %addr, "listener removed");
        Ok(())
    }

    /// Sets the ANA state of one ANA group (or all, `None`) through a portal; connected
    /// hosts on that portal get an ANA change notice and see it in the ANA log.
    pub fn set_ana_state(
        &self,
        nqn: &str,
        addr: &ListenAddr,
        anagrpid: Option<u32>,
        state: AnaState,
    ) -> Result<(), TargetError> {
        let s = self.get(nqn)?;
        s.set_ana_state(addr.socket_addr()?, anagrpid, state)?;
        tracing::info!(nqn, portal = %addr, ?anagrpid, ?state, "ANA state changed");
        Ok(())
    }

    /// Allows a host NQN to connect.
    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), TargetError> {
        self.get(nqn)?.add_host(host)?;
        self.shared.discovery_changed();
        Ok(())
    }

    /// Removes a host NQN from the allow list (its controllers are torn down unless any
    /// host may connect).
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), TargetError> {
        self.get(nqn)?.remove_host(host)?;
        self.shared.discovery_changed();
        Ok(())
    }

    /// Allows any host, or only the listed ones.
    pub fn set_allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), TargetError> {
        self.get(nqn)?.set_allow_any_host(allow);
        self.shared.discovery_changed();
        Ok(())
    }

    /// Discovery log generation counter.
    pub fn discovery_genctr(&self) -> u64 {
        self.shared.genctr.load(Ordering::Acquire)
    }

    /// Open connections (including ones closing while their I/O completes).
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Stops the target: closes the portals, lets every connection finish the I/O it has at
    /// the block devices and send its responses (new commands are no longer read), then
    /// closes the connections and tears the controllers down. Returns false if connections
    /// were still open after `timeout`.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return self.wait_idle(timeout);
        }
        self.shared.acceptor_cmd(AcceptCmd::Stop);
        if let Some(t) = lock(&self.acceptor).take() {
            let _ = t.join();
        }
        lock(&self.shared.ports).clear();
        let id = self.shared.id;
        for h in &self.shared.reactors {
            let _ = h.send(move |r| crate::group::stop(r, id));
        }
        let drained = self.wait_idle(timeout);
        for s in self.subsystems() {
            s.fail_all_controllers("target stopped");
        }
        for c in lock(&self.shared.discovery).ctrls.drain(..) {
            c.fail("target stopped");
        }
        drained
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.shared.live.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}
