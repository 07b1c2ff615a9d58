//! A bounded, numbered log of management events ([`EventBus`]) that the daemon publishes
//! to and clients read with the `vmpath_get_events` RPC.
//!
//! Every event gets a sequence number (1, 2, ...) and a wall-clock timestamp. The bus keeps
//! the newest `capacity` events; a reader that falls behind is told how many it lost. It is
//! a management-plane structure (a mutex and a condition variable): data-path code sends its
//! events to a management thread rather than publishing from the I/O path.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{parse_params, RpcError};

/// Default number of events kept.
pub const DEFAULT_EVENT_CAPACITY: usize = 4096;
/// Default and largest number of events returned by one `vmpath_get_events` call.
pub const MAX_EVENTS_PER_CALL: usize = 1000;
/// Longest wait a `vmpath_get_events` call may ask for, in milliseconds.
pub const MAX_WAIT_MS: u64 = 30_000;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// Wall-clock time of publication, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// Event type, e.g. `bdev_created`, `path_failed`, `vm_migrate_recommended`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Event-specific detail.
    pub data: Value,
}

/// The answer to a read: events from a sequence number on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Events in order.
    pub events: Vec<Event>,
    /// The `since` to pass on the next read.
    pub next_seq: u64,
    /// Events the reader asked for that were already dropped to bound memory.
    pub lost: u64,
}

/// Params of `vmpath_get_events`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetEventsParams {
    /// Return events with `seq >= since` (0 = from the oldest kept).
    #[serde(default)]
    since: u64,
    /// At most this many events (default and maximum [`MAX_EVENTS_PER_CALL`]).
    #[serde(default)]
    max: Option<usize>,
    /// If there is no such event yet, wait up to this long for one (0 = do not wait).
    #[serde(default)]
    wait_ms: u64,
}

struct State {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// A bounded broadcast log of JSON events.
pub struct EventBus {
    state: Mutex<State>,
    arrived: Condvar,
    capacity: usize,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("capacity", &self.capacity)
            .field("next_seq", &self.lock().next_seq)
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(DEFAULT_EVENT_CAPACITY)
    }
}

impl EventBus {
    /// A bus that keeps the newest `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EventBus {
            state: Mutex::new(State {
                events: VecDeque::with_capacity(capacity.min(DEFAULT_EVENT_CAPACITY)),
                next_seq: 1,
            }),
            arrived: Condvar::new(),
            capacity,
        }
    }

    /// How many events are kept at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequence number of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Publishes an event and returns its sequence number. The oldest event is dropped
    /// when the bus is full.
    pub fn publish(&self, kind: impl Into<String>, data: Value) -> u64 {
        let timestamp_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        if state.events.len() == self.capacity {
            state.events.pop_front();
        }
        state.events.push_back(Event {
            seq,
            timestamp_us,
            kind: kind.into(),
            data,
        });
        drop(state);
        self.arrived.notify_all();
        seq
    }

    /// Events with `seq >= since`, at most `max` of them.
    pub fn since(&self, since: u64, max: usize) -> EventBatch {
        Self::collect(&self.lock(), since, max)
    }

    /// Like [`EventBus::since`], but when no such event exists yet, waits up to `timeout`
    /// for one to be published.
    pub fn wait_since(&self, since: u64, max: usize, timeout: Duration) -> EventBatch {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.next_seq <= since.max(1) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = match self.arrived.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        Self::collect(&state, since, max)
    }

    /// Serves the `vmpath_get_events` RPC: params `{"since": u64, "max": n, "wait_ms": ms}`
    /// (all optional), result `{"events": [...], "next_seq": n, "lost": n}`.
    pub fn rpc_get_events(&self, params: Option<Value>) -> Result<Value, RpcError> {
        let p: GetEventsParams = parse_params(params)?;
        let max = match p.max {
            None => MAX_EVENTS_PER_CALL,
            Some(0) => return Err(RpcError::invalid_params("max: must be at least 1")),
            Some(n) if n > MAX_EVENTS_PER_CALL => {
                return Err(RpcError::invalid_params(format!(
                    "max: must be at most {MAX_EVENTS_PER_CALL}, got {n}"
                )))
            }
            Some(n) => n,
        };
        if p.wait_ms > MAX_WAIT_MS {
            return Err(RpcError::invalid_params(format!(
                "wait_ms: must be at most {MAX_WAIT_MS}, got {}",
                p.wait_ms
            )));
        }
        let batch = if p.wait_ms == 0 {
            self.since(p.since, max)
        } else {
            self.wait_since(p.since, max, Duration::from_millis(p.wait_ms))
        };
        serde_json::to_value(batch).map_err(RpcError::internal)
    }

    fn collect(state: &State, since: u64, max: usize) -> EventBatch {
        // A reader ahead of the bus (e.g. after a daemon restart) restarts at its end.
        let since = since.min(state.next_seq);
        let first_kept = state.events.front().map_or(state.next_seq, |e| e.seq);
        let lost = first_kept.saturating_sub(since.max(1));
        let skip = usize::try_from(since.saturating_sub(first_kept)).unwrap_or(usize::MAX);
        let events: Vec<Event> = state.events.iter().skip(skip).take(max).cloned().collect();
        let next_seq = events.last().map_or(since.max(first_kept), |e| e.seq + 1);
        EventBatch {
            events,
            next_seq,
            lost,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn numbered_in_order_and_bounded() {
        let bus = EventBus::new(3);
        assert_eq!(bus.last_seq(), 0);
        let b = bus.since(0, 10);
        assert_eq!((b.events.len(), b.next_seq, b.lost), (0, 1, 0));
        for i in 0..5 {
            assert_eq!(bus.publish("tick", json!({"i": i})), i + 1);
        }
        assert_eq!(bus.last_seq(), 5);
        // Events 1 and 2 were dropped.
        let b = bus.since(0, 10);
        let seqs: Vec<u64> = b.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(b.lost, 2);
        assert_eq!(b.next_seq, 6);
        assert_eq!(b.events[0].data, json!({"i": 2}));
        assert!(b.events[0].timestamp_us > 0);
        // Reading from the middle, with a limit.
        let b = bus.since(4, 1);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].seq, 4);
        assert_eq!((b.next_seq, b.lost), (5, 0));
        // Caught up.
        let b = bus.since(6, 10);
        assert_eq!((b.events.len(), b.next_seq, b.lost), (0, 6, 0));
        // Ahead of the bus.
        let b = bus.since(100, 10);
        assert_eq!((b.events.len(), b.next_seq), (0, 6));
    }

    #[test]
    fn waiter_wakes_on_publish() {
        let bus = Arc::new(EventBus::new(8));
        let publisher = {
            let bus = Arc::clone(&bus);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                bus.publish("late", Value::Null)
            })
        };
        let b = bus.wait_since(1, 10, Duration::from_secs(20));
        assert_eq!(publisher.join().unwrap(), 1);
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].kind, "late");
        // Nothing newer: the wait times out with an empty batch.
        let b = bus.wait_since(2, 10, Duration::from_millis(10));
        assert!(b.events.is_empty());
        assert_eq!(b.next_seq, 2);
    }

    #[test]
    fn rpc_params() {
        let bus = EventBus::new(8);
        bus.publish("a", json!(1));
        bus.publish("b", json!(2));
        let v = bus.rpc_get_events(None).unwrap();
        assert_eq!(v["events"][1]["type"], "b");
        assert_eq!(v["next_seq"], 3);
        let v = bus.rpc_get_events(Some(json!({"since": 2}))).unwrap();
        assert_eq!(v["events"].as_array().unwrap().len(), 1);
        let e = bus.rpc_get_events(Some(json!({"max": 0}))).unwrap_err();
        assert!(e.message.contains("max"), "{e}");
        let e = bus
            .rpc_get_events(Some(json!({"wait_ms": 999_999})))
            .unwrap_err();
        assert!(e.message.contains("wait_ms"), "{e}");
        let e = bus.rpc_get_events(Some(json!({"from": 1}))).unwrap_err();
        assert!(e.message.contains("unknown field `from`"), "{e}");
    }
}
