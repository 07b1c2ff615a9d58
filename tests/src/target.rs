//! The project's NVMe/TCP target (`nvmf-target`) run on a thread of its own, optionally inside
//! a network namespace, exporting one RAM namespace on several portals. It can be killed and
//! restarted on the same block device (the data survives), and its ANA states flipped.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nvme_spec::AnaState;
use nvmf_target::{ListenAddr, NamespaceParams, SubsystemParams, Target, TargetOptions};
use vmpath_bdev::malloc::MallocBdev;
use vmpath_bdev::BlockDevice;
use vmpath_runtime::{Runtime, RuntimeConfig};

use crate::netns::Netns;

/// NQN of the test subsystem.
pub const NQN: &str = "nqn.2024-01.io.vmpath:fault-test";

struct Side {
    runtime: Option<Runtime>,
    target: Option<Target>,
    bdev: Arc<dyn BlockDevice>,
    portals: Vec<(String, String)>,
    cores: Option<Vec<usize>>,
    opts: TargetOptions,
}

impl Side {
    fn start(&mut self) -> Result<Vec<ListenAddr>, String> {
        let rt = Runtime::start(RuntimeConfig {
            cores: self.cores.clone(),
            idle_sleep_ns: 200_000,
            max_sleep_ns: 50_000_000,
            pin: self.cores.is_some(),
            stop_grace: Duration::from_secs(2),
            ..RuntimeConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let t = Target::new(self.opts.clone(), rt.handles().to_vec()).map_err(|e| e.to_string())?;
        t.create_subsystem(SubsystemParams {
            nqn: NQN.into(),
            serial: "VMPATH-FAULT".into(),
            model: "vmpath fault test".into(),
            allow_any_host: true,
            hosts: vec![],
        })
        .map_err(|e| e.to_string())?;
        t.add_namespace(
            NQN,
            NamespaceParams {
                bdev: self.bdev.clone(),
                nsid: Some(1),
                anagrpid: None,
            },
        )
        .map_err(|e| e.to_string())?;
        let mut addrs = Vec::new();
        for (a, p) in &self.portals {
            addrs.push(
                t.add_listener(
                    NQN,
                    &ListenAddr::new(a.as_str(), p.as_str()),
                    AnaState::Optimized,
                )
                .map_err(|e| format!("listener {a}:{p}: {e}"))?,
            );
        }
        self.runtime = Some(rt);
        self.target = Some(t);
        Ok(addrs)
    }

    fn stop(&mut self) {
        if let Some(t) = self.target.take() {
            t.shutdown(Duration::from_millis(200));
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown();
        }
    }
}

type Job = Box<dyn FnOnce(&mut Side) + Send>;

/// A target running on its own control thread.
pub struct TestTarget {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The portals (address, port) as listening.
    pub portals: Vec<(String, String)>,
    /// The exported device (shared across restarts).
    pub bdev: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for TestTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestTarget")
            .field("portals", &self.portals)
            .finish_non_exhaustive()
    }
}

impl TestTarget {
    /// Starts a target exporting a `blocks` x 4 KiB RAM namespace on `portals` (port "0" picks
    /// a free port), inside `ns` when given, with reactors on `cores` (None: one unpinned
    /// reactor per core of the process).
    pub fn start(
        ns: Option<&Netns>,
        portals: &[(&str, &str)],
        blocks: u64,
        cores: Option<Vec<usize>>,
    ) -> Result<TestTarget, String> {
        let bdev: Arc<dyn BlockDevice> = Arc::new(
            MallocBdev::new("FaultDisk", blocks, 4096, Default::default())
                .map_err(|e| e.to_string())?
                .with_uuid(*b"vmpath-fault-ns1"),
        );
        let (tx, rx) = mpsc::channel::<Job>();
        let ns_path = ns.map(|n| n.name().to_string());
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut side = Side {
            runtime: None,
            target: None,
            bdev: bdev.clone(),
            portals: portals
                .iter()
                .map(|(a, p)| (a.to_string(), p.to_string()))
                .collect(),
            cores,
            opts: TargetOptions::default(),
        };
        let thread = std::thread::Builder::new()
            .name("test-target".into())
            .spawn(move || {
                if let Some(name) = ns_path {
                    let f = match std::fs::File::open(format!("/run/netns/{name}")) {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    use std::os::fd::AsRawFd;
                    // SAFETY: setns with a valid namespace fd, for this thread only.
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let _ = ready_tx.send(Err(std::io::Error::last_os_error().to_string()));
                        return;
                    }
                }
                let _ = ready_tx.send(side.start().map(|a| {
                    a.iter()
                        .map(|l| (l.traddr.clone(), l.trsvcid.clone()))
                        .collect::<Vec<_>>()
                }));
                while let Ok(job) = rx.recv() {
                    job(&mut side);
                }
                side.stop();
            })
            .map_err(|e| e.to_string())?;
        let portals = ready_rx
            .recv()
            .map_err(|_| "target thread died".to_string())??;
        Ok(TestTarget {
            tx: Some(tx),
            thread: Some(thread),
            portals,
            bdev,
        })
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut Side) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .expect("target thread")
            .send(Box::new(move |s| {
                let _ = tx.send(f(s));
            }))
            .expect("target thread alive");
        rx.recv().expect("target thread answered")
    }

    /// Sets portal `i`'s ANA state (the target raises an ANA change AEN).
    pub fn set_ana(&self, i: usize, state: AnaState) -> Result<(), String> {
        let (a, p) = self.portals[i].clone();
        self.call(move |s| match &s.target {
            Some(t) => t
                .set_ana_state(NQN, &ListenAddr::new(a.as_str(), p.as_str()), None, state)
                .map_err(|e| e.to_string()),
            None => Err("target is stopped".into()),
        })
    }

    /// Stops the target abruptly: every connection is closed, nothing is served.
    pub fn kill(&self) {
        self.call(|s| s.stop());
    }

    /// Starts it again on the same device and portals.
    pub fn restart(&self) -> Result<(), String> {
        let portals = self.portals.clone();
        self.call(move |s| {
            s.portals = portals;
            s.start().map(|_| ())
        })
    }
}

impl Drop for TestTarget {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
