//! Path events (up, down, failover started / finished, ANA change) with timestamps, delivered
//! to subscribers through bounded channels and to registered callbacks.
//!
//! Events are produced by controller threads and the management plane, never by the I/O
//! path. A subscriber that does not keep up loses events (counted in
//! [`EventHub::dropped`]); a full subscriber never blocks a controller thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::path::{PathId, PathState};

/// What happened to a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PathEventKind {
    /// The path became usable (connected; `state` carries its ANA state).
    Up {
        /// New state.
        state: PathState,
    },
    /// The path stopped being usable.
    Down {
        /// Why (transport error, keep-alive timeout, I/O timeout, ...).
        reason: String,
    },
    /// The path's outstanding I/O started moving to other paths.
    FailoverStarted,
    /// Every I/O of the lost association has been moved (in-doubt writes included).
    FailoverFinished {
        /// Milliseconds from FailoverStarted.
        took_ms: u64,
    },
    /// The ANA state changed.
    AnaChange {
        /// Previous state.
        old: PathState,
        /// New state.
        new: PathState,
    },
    /// The path was added to its namespace.
    Added,
    /// The path was removed (detached, or given up after `ctrlr_loss_timeout`).
    Removed {
        /// Why.
        reason: String,
    },
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathEvent {
    /// Monotonic time (ns, [`crate::now_ns`]).
    pub time_ns: u64,
    /// Wall-clock time, microseconds since the Unix epoch.
    pub wall_us: u64,
    /// Namespace (bdev) name.
    pub bdev: String,
    /// Path id in the namespace.
    pub path: PathId,
    /// Path display name.
    pub path_name: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: PathEventKind,
}

/// A callback subscriber.
pub type EventCallback = Box<dyn Fn(&PathEvent) + Send + Sync>;

/// Fans events out to subscribers.
#[derive(Default)]
pub struct EventHub {
    senders: Mutex<Vec<SyncSender<PathEvent>>>,
    callbacks: Mutex<Vec<Arc<EventCallback>>>,
    dropped: AtomicU64,
    published: AtomicU64,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("published", &self.published.load(Ordering::Relaxed))
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EventHub {
    /// A new hub without subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bounded channel receiving every event from now on (`capacity` at least 1).
    pub fn subscribe(&self, capacity: usize) -> Receiver<PathEvent> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        self.senders.lock().expect("event lock").push(tx);
        rx
    }

    /// Calls `f` for every event from now on (on the publishing thread: keep it short).
    pub fn on_event(&self, f: EventCallback) {
        self.callbacks.lock().expect("event lock").push(Arc::new(f));
    }

    /// Events lost because a subscriber's channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Publishes an event.
    pub fn publish(&self, bdev: &str, path: PathId, path_name: &str, kind: PathEventKind) {
        let ev = PathEvent {
            time_ns: crate::now_ns(),
            wall_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
            bdev: bdev.to_string(),
            path,
            path_name: path_name.to_string(),
            kind,
        };
        tracing::info!(bdev, path = %path, path_name, event = ?ev.kind, "path event");
        self.published.fetch_add(1, Ordering::Relaxed);
        {
            let mut senders = self.senders.lock().expect("event lock");
            senders.retain(|s| match s.try_send(ev.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        }
        let cbs: Vec<Arc<EventCallback>> = self.callbacks.lock().expect("event lock").clone();
        for cb in cbs {
            cb(&ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_subscribers_and_callbacks() {
        let hub = EventHub::new();
        let rx = hub.subscribe(2);
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        hub.on_event(Box::new(move |_| {
            s.fetch_add(1, Ordering::Relaxed);
        }));
        for _ in 0..3 {
            hub.publish("Nvme0n1", PathId(0), "p", PathEventKind::FailoverStarted);
        }
        assert_eq!(seen.load(Ordering::Relaxed), 3);
        assert_eq!(hub.dropped(), 1);
        let e = rx.try_recv().unwrap();
        assert_eq!(e.kind, PathEventKind::FailoverStarted);
        assert!(e.wall_us > 0);
        drop(rx);
        hub.publish("Nvme0n1", PathId(0), "p", PathEventKind::Added);
        assert!(hub.senders.lock().unwrap().is_empty());
    }
}
