//! Reactor threads: one pinned OS thread per core running the adaptive idle loop.

use std::thread::JoinHandle;
use std::time::Duration;

use crate::reactor::{PollStatus, Reactor, ReactorHandle, DEFAULT_INBOX_CAPACITY};
use crate::topology::{Topology, TopologyError};

/// How reactors are started.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Cores to run one reactor each on; `None` = every core of the process CPU set.
    pub cores: Option<Vec<usize>>,
    /// Continuous idle time after which a reactor sleeps (adaptive idle). 0 = sleep as soon as
    /// a poll finds nothing (useful in tests); `u64::MAX` = never sleep (pure busy polling).
    pub idle_sleep_ns: u64,
    /// Upper bound of one sleep, so counters stay fresh even with nothing registered.
    pub max_sleep_ns: u64,
    /// Inbox capacity of each reactor.
    pub inbox_capacity: usize,
    /// Pin each reactor thread to its core.
    pub pin: bool,
    /// How long a stopping reactor keeps polling for its pollers to finish.
    pub stop_grace: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cores: None,
            idle_sleep_ns: 200_000,
            max_sleep_ns: 1_000_000_000,
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            pin: true,
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// Errors starting the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Core selection failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A reactor thread could not be created.
    #[error("cannot start reactor {id} on core {core}: {source}")]
    Spawn {
        /// Reactor index.
        id: u32,
        /// Core.
        core: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A set of running reactor threads.
#[derive(Debug)]
pub struct Runtime {
    handles: Vec<ReactorHandle>,
    threads: Vec<JoinHandle<()>>,
    topology: Topology,
}

impl Runtime {
    /// Starts one reactor thread per selected core and waits until all are running.
    pub fn start(cfg: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let topology = Topology::discover()?;
        let cores = topology.resolve(cfg.cores.as_deref())?;
        let mut handles = Vec::with_capacity(cores.len());
        let mut threads = Vec::with_capacity(cores.len());
        for (i, &core) in cores.iter().enumerate() {
            let id = i as u32;
            let (tx, rx) = std::sync::mpsc::channel();
            let c = cfg.clone();
            let spawn = std::thread::Builder::new()
                .name(format!("reactor_{id}"))
                .spawn(move || {
                    if c.pin && !core_affinity::set_for_current(core_affinity::CoreId { id: core })
                    {
                        tracing::warn!(reactor = id, core, "could not pin reactor thread");
                    }
                    let reactor = match Reactor::new(id, Some(core), c.inbox_capacity) {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(reactor.handle()));
                    run_loop(reactor, &c);
                })
                .map_err(|source| RuntimeError::Spawn { id, core, source })?;
            let handle = rx
                .recv()
                .map_err(|_| RuntimeError::Spawn {
                    id,
                    core,
                    source: std::io::Error::other("reactor thread exited during start"),
                })?
                .map_err(|source| RuntimeError::Spawn { id, core, source })?;
            tracing::info!(
                reactor = id,
                core,
                numa = topology.numa_node_of(core),
                "reactor started"
            );
            handles.push(handle);
            threads.push(spawn);
        }
        Ok(Runtime {
            handles,
            threads,
            topology,
        })
    }

    /// Handles of all reactors, indexed by reactor id.
    pub fn handles(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// The topology the runtime was started with.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Asks every reactor to stop and joins the threads. Each reactor keeps polling until its
    /// pollers have unregistered (in-flight work drains) or the grace period ends.
    pub fn shutdown(mut self) {
        for h in &self.handles {
            h.request_stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for h in &self.handles {
            h.request_stop();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The adaptive idle loop around [`Reactor::poll`].
fn run_loop(mut reactor: Reactor, cfg: &RuntimeConfig) {
    let mut idle_since: Option<u64> = None;
    let mut stop_deadline: Option<u64> = None;
    loop {
        let now = crate::now_ns();
        let status = reactor.poll(now);
        if reactor.stop_requested() {
            let deadline = *stop_deadline.get_or_insert(now + cfg.stop_grace.as_nanos() as u64);
            if reactor.poller_count() == 0 && !reactor.has_messages() {
                break;
            }
            if now >= deadline {
                tracing::warn!(
                    reactor = reactor.id(),
                    pollers = ?reactor.poller_names(),
                    "stop grace period over with pollers still registered"
                );
                break;
            }
        }
        match status {
            PollStatus::Busy => idle_since = None,
            PollStatus::Idle => {
                let since = *idle_since.get_or_insert(now);
                if now.saturating_sub(since) >= cfg.idle_sleep_ns {
                    let max = if reactor.stop_requested() {
                        1_000_000
                    } else {
                        cfg.max_sleep_ns
                    };
                    reactor.sleep(now, max);
                }
            }
        }
    }
    reactor.mark_stopped();
}
