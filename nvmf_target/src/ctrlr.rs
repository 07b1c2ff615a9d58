//! Controllers (dynamic controller model, NVMe-oF 1.1 §3.3.1 and Base 2.0 §3): one per
//! admin-queue Connect, identified by CNTLID, owning the controller registers (CC/CSTS),
//! feature values, the pending asynchronous events and the error log. I/O queues join it by
//! CNTLID. It is shared between the admin queue's reactor and its I/O queues' reactors; the
//! data path only reads two atomics from it (`ready`, `dead`).

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nvme_spec::features::{aec, AsyncEvent};
use nvme_spec::log::ErrorLogEntry;
use nvme_spec::regs::{Cc, Csts};
use nvme_spec::Status;

use crate::subsystem::Subsystem;

/// Events kept for a controller whose host has no AER outstanding.
const MAX_PENDING_EVENTS: usize = 16;
/// Error log entries kept (ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 16;
/// Changed namespace list capacity before it overflows (log page 04h).
const MAX_CHANGED_NS: usize = 1024;

/// Mutable controller state (admin path only).
#[derive(Debug)]
pub(crate) struct CtrlState {
    pub(crate) cc: Cc,
    pub(crate) csts: Csts,
    pub(crate) aec: u32,
    pub(crate) num_io_queues: u16,
    pub(crate) io_qids: BTreeSet<u16>,
    pub(crate) wce: bool,
    events: VecDeque<AsyncEvent>,
    /// Log pages whose notice was reported and not yet read with RAE cleared.
    masked: BTreeSet<u8>,
    pub(crate) changed_ns: BTreeSet<u32>,
    pub(crate) changed_overflow: bool,
    pub(crate) errors: VecDeque<ErrorLogEntry>,
    pub(crate) error_count: u64,
}

/// One controller of a subsystem or of the discovery subsystem.
pub struct Controller {
    cntlid: u16,
    subsys: Option<Arc<Subsystem>>,
    hostnqn: String,
    hostid: [u8; 16],
    port: SocketAddr,
    dead: AtomicBool,
    ready: AtomicBool,
    kato_ms: AtomicU32,
    events_pending: AtomicBool,
    st: Mutex<CtrlState>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("hostnqn", &self.hostnqn)
            .field("discovery", &self.subsys.is_none())
            .finish_non_exhaustive()
    }
}

impl Controller {
    pub(crate) fn new(
        cntlid: u16,
        subsys: Option<Arc<Subsystem>>,
        hostnqn: String,
        hostid: [u8; 16],
        port: SocketAddr,
        kato_ms: u32,
        num_io_queues: u16,
    ) -> Controller {
        Controller {
            cntlid,
            subsys,
            hostnqn,
            hostid,
            port,
            dead: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            kato_ms: AtomicU32::new(kato_ms),
            events_pending: AtomicBool::new(false),
            st: Mutex::new(CtrlState {
                cc: Cc(0),
                csts: Csts(0),
                // Every notice starts disabled (Base 2.0 figure 327 defaults).
                aec: 0,
                num_io_queues,
                io_qids: BTreeSet::new(),
                wce: true,
                events: VecDeque::new(),
                masked: BTreeSet::new(),
                changed_ns: BTreeSet::new(),
                changed_overflow: false,
                errors: VecDeque::new(),
                error_count: 0,
            }),
        }
    }

    /// Controller ID.
    pub fn cntlid(&self) -> u16 {
        self.cntlid
    }

    /// Host NQN of the association.
    pub fn hostnqn(&self) -> &str {
        &self.hostnqn
    }

    /// Host identifier.
    pub fn hostid(&self) -> [u8; 16] {
        self.hostid
    }

    /// The portal the admin queue connected through.
    pub fn port(&self) -> SocketAddr {
        self.port
    }

    /// The subsystem (`None` for a discovery controller).
    pub fn subsystem(&self) -> Option<&Arc<Subsystem>> {
        self.subsys.as_ref()
    }

    /// True for a discovery controller.
    pub fn is_discovery(&self) -> bool {
        self.subsys.is_none()
    }

    /// Number of connected I/O queues.
    pub fn io_queue_count(&self) -> usize {
        self.lock().io_qids.len()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, CtrlState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the controller was torn down (KATO expiry, admin queue lost, deletion).
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// CSTS.RDY.
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, r: bool) {
        self.ready.store(r, Ordering::Release);
    }

    /// Keep Alive Timeout in milliseconds (0 = disabled).
    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_kato_ms(&self, v: u32) {
        self.kato_ms.store(v, Ordering::Relaxed);
    }

    /// Tears the controller down: every queue of the association closes on its next poll.
    pub(crate) fn fail(&self, why: &str) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.ready.store(false, Ordering::Release);
            tracing::info!(cntlid = self.cntlid, host = %self.hostnqn, reason = why, "controller torn down");
        }
    }

    /// Queues an asynchronous event (if enabled and not masked) for the next AER.
    pub(crate) fn raise(&self, ev: AsyncEvent) {
        let mut st = self.lock();
        if let Some(bit) = ev.aec_bit() {
            if st.aec & bit == 0 {
                return;
            }
        }
        if st.masked.contains(&ev.log_page) || st.events.contains(&ev) {
            return;
        }
        if st.events.len() >= MAX_PENDING_EVENTS {
            st.events.pop_front();
        }
        st.events.push_back(ev);
        self.events_pending.store(true, Ordering::Release);
    }

    /// Records a namespace change (Changed Namespace List log) and raises the notice.
    pub(crate) fn namespace_changed(&self, nsid: u32) {
        {
            let mut st = self.lock();
            if st.changed_ns.len() >= MAX_CHANGED_NS {
                st.changed_overflow = true;
            } else {
                st.changed_ns.insert(nsid);
            }
        }
        self.raise(AsyncEvent::NS_ATTRIBUTE_CHANGED);
    }

    /// True when events wait for an AER (one relaxed load; checked every poll).
    #[inline]
    pub(crate) fn has_events(&self) -> bool {
        self.events_pending.load(Ordering::Acquire)
    }

    /// Takes the next event to complete an AER with; the event's log page becomes masked
    /// until it is read with RAE cleared (Base 2.0 §5.2).
    pub(crate) fn take_event(&self) -> Option<AsyncEvent> {
        let mut st = self.lock();
        let ev = st.events.pop_front();
        if let Some(e) = ev {
            st.masked.insert(e.log_page);
        }
        if st.events.is_empty() {
            self.events_pending.store(false, Ordering::Release);
        }
        ev
    }

    /// The host read log page `lid` with RAE cleared: unmask its notice.
    pub(crate) fn log_read(&self, lid: u8) {
        self.lock().masked.remove(&lid);
    }

    /// Appends an error log entry for a failed command.
    pub(crate) fn record_error(&self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        let mut st = self.lock();
        st.error_count += 1;
        let mut e = ErrorLogEntry::zeroed();
        e.set_error_count(st.error_count);
        e.set_sqid(sqid);
        e.set_cid(cid);
        e.set_status_phase(status.0 << 1);
        e.set_parameter_error_location(0xffff);
        e.set_nsid(nsid);
        e.set_lba(lba);
        e.set_trtype(nvme_spec::log::trtype::TCP);
        if st.errors.len() >= ERROR_LOG_ENTRIES {
            st.errors.pop_back();
        }
        st.errors.push_front(e);
    }
}

/// AEC bits an I/O controller supports.
pub(crate) const AEC_SUPPORTED_IO: u32 = aec::NS_ATTRIBUTE | aec::ANA_CHANGE;
/// AEC bits a discovery controller supports.
pub(crate) const AEC_SUPPORTED_DISCOVERY: u32 = aec::DISCOVERY_LOG_CHANGE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_gated_masked_and_bounded() {
        let c = Controller::new(
            1,
            None,
            "nqn.2014-08.org.nvmexpress:uuid:h".into(),
            [0; 16],
            "127.0.0.1:1".parse().unwrap(),
            0,
            4,
        );
        c.raise(AsyncEvent::ANA_CHANGE);
        assert!(!c.has_events(), "disabled in AEC");
        c.lock().aec = aec::ANA_CHANGE | aec::NS_ATTRIBUTE;
        c.raise(AsyncEvent::ANA_CHANGE);
        c.raise(AsyncEvent::ANA_CHANGE);
        assert!(c.has_events());
        assert_eq!(c.take_event(), Some(AsyncEvent::ANA_CHANGE));
        assert!(!c.has_events(), "duplicate suppressed");
        c.raise(AsyncEvent::ANA_CHANGE);
        assert!(!c.has_events(), "masked until the log is read");
        c.log_read(AsyncEvent::ANA_CHANGE.log_page);
        c.raise(AsyncEvent::ANA_CHANGE);
        assert_eq!(c.take_event(), Some(AsyncEvent::ANA_CHANGE));
        c.namespace_changed(3);
        assert_eq!(c.take_event(), Some(AsyncEvent::NS_ATTRIBUTE_CHANGED));
        assert!(c.lock().changed_ns.contains(&3));
        for i in 0..20 {
            c.record_error(1, i, Status::LBA_OUT_OF_RANGE, 1, 9);
        }
        let st = c.lock();
        assert_eq!(st.errors.len(), ERROR_LOG_ENTRIES);
        assert_eq!(st.errors[0].error_count(), 20, "newest first");
    }
}
