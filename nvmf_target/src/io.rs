//! The I/O command set on a queue pair (NVM Command Set 1.0 §3.2: Read, Write, Flush,
//! Write Zeroes, Dataset Management deallocate) and the one path to the block devices,
//! [`Conn::submit_io`], which consults the queue's admission hook.

use nvme_spec::cmd::DsmRange;
use nvme_spec::{AnaState, Status};
use smallvec::smallvec;
use vmpath_bdev::{IoError, IoRequest, IoType};

use crate::admission::Admit;
use crate::conn::{Conn, Env, NsRoute, RState, Work};
use crate::pages::lbads;

/// The NVMe status for a block-device error (Base 2.0 figures 96-99).
pub(crate) fn status_of(e: IoError, op: IoType) -> Status {
    match e {
        IoError::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE,
        IoError::LengthMismatch { .. } | IoError::Misaligned { .. } => Status::INTERNAL_ERROR,
        IoError::Unsupported(_) => Status::INVALID_OPCODE,
        IoError::ReadOnly => Status::NAMESPACE_WRITE_PROTECTED,
        IoError::Device(_) => match op {
            IoType::Read => Status::UNRECOVERED_READ_ERROR,
            IoType::Write | IoType::WriteZeroes => Status::WRITE_FAULT,
            _ => Status::INTERNAL_ERROR,
        },
        IoError::NoPath => Status::NAMESPACE_NOT_READY,
        IoError::Timeout => Status::COMMAND_INTERRUPTED,
        IoError::Aborted => Status::ABORTED_SQ_DELETION,
    }
}

impl Conn {
    /// Starts the block-device work of an I/O command.
    pub(crate) fn exec_io(&mut self, env: &mut Env<'_>, idx: u16) {
        let (work, sqe) = {
            let r = &mut self.slots[idx as usize];
            r.sub_next = 0;
            r.sub_inflight = 0;
            (r.work, r.sqe)
        };
        let total = match work {
            Work::Rw { .. } | Work::Flush { .. } | Work::WriteZeroes { .. } => 1,
            Work::Dsm { .. } => {
                let dsm = nvme_spec::cmd::DatasetManagement::from_sqe(&sqe);
                if !dsm.deallocate {
                    // Only hints: nothing to do (NVM Command Set §3.2.3).
                    0
                } else {
                    match self.compact_dsm_ranges(idx, dsm.nr) {
                        Ok(n) => n,
                        Err(s) => {
                            self.slots[idx as usize].status = s;
                            self.complete(idx);
                            return;
                        }
                    }
                }
            }
            Work::None => 0,
        };
        self.slots[idx as usize].sub_total = total;
        let r = &self.slots[idx as usize];
        if r.sub_total == 0 {
            self.complete(idx);
            return;
        }
        if self.pending.is_empty() && self.submit_io(env, idx) {
            self.slots[idx as usize].state = RState::Exec;
        } else {
            self.slots[idx as usize].state = RState::Pending;
            self.pending.push_back(idx);
        }
    }

    /// Validates the Dataset Management ranges and moves the non-empty ones to the front of
    /// the buffer; returns how many there are.
    fn compact_dsm_ranges(&mut self, idx: u16, nr: u16) -> Result<u16, Status> {
        let chan_blocks = match self.slots[idx as usize].work {
            Work::Dsm { chan } => self
                .routes
                .iter()
                .flatten()
                .find(|r| r.chan == chan)
                .map(|r| r.num_blocks)
                .unwrap_or(0),
            _ => 0,
        };
        let r = &mut self.slots[idx as usize];
        let data = r.data_mut();
        let mut n = 0usize;
        let mut blocks = 0u64;
        for i in 0..nr as usize {
            let Some(range) = DsmRange::from_slice(&data[i * 16..i * 16 + 16]) else {
                return Err(Status::DATA_SGL_LENGTH_INVALID);
            };
            let (slba, nlb) = (range.slba(), range.nlb());
            if nlb == 0 {
                continue;
            }
            if slba.checked_add(nlb as u64).is_none_or(|e| e > chan_blocks) {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
            data.copy_within(i * 16..i * 16 + 16, n * 16);
            n += 1;
            blocks += nlb as u64;
        }
        r.info.num_blocks = blocks;
        Ok(n as u16)
    }

    /// The `k`th block-device request of slot `idx`.
    fn build_sub(&mut self, env: &Env<'_>, idx: u16, k: u16) -> Option<(u32, IoRequest)> {
        let tag = ((env.conn_idx as u64) << 32) | idx as u64;
        let r = &mut self.slots[idx as usize];
        Some(match r.work {
            Work::Rw {
                op,
                chan,
                slba,
                nlb,
            } => {
                let len = r.len as usize;
                let buf = r.buf.as_mut()?;
                // SAFETY: the slot keeps the buffer, untouched, until this request's
                // completion is delivered (`on_bdev_complete`); a connection with I/O in
                // flight is never dropped (`is_reapable`).
                let iov = unsafe { buf.iovec(0..len) };
                (
                    chan,
                    IoRequest::with_iovs(op, slba, nlb, smallvec![iov], tag),
                )
            }
            Work::Flush { chan } => (chan, IoRequest::no_data(IoType::Flush, 0, 0, tag)),
            Work::WriteZeroes { chan, slba, nlb } => (
                chan,
                IoRequest::no_data(IoType::WriteZeroes, slba, nlb, tag),
            ),
            Work::Dsm { chan } => {
                let o = k as usize * 16;
                let range = DsmRange::from_slice(r.data().get(o..o + 16)?)?;
                (
                    chan,
                    IoRequest::no_data(IoType::Unmap, range.slba(), range.nlb(), tag),
                )
            }
            Work::None => return None,
        })
    }

    /// The one path from the target to the block devices: asks the admission hook (once
    /// per command) and submits the command's remaining block requests. Returns true when
    /// everything is submitted; false leaves the rest for the next [`Conn::kick`].
    pub(crate) fn submit_io(&mut self, env: &mut Env<'_>, idx: u16) -> bool {
        if !self.slots[idx as usize].admitted {
            if let Some(a) = self.admission.as_mut() {
                let info = self.slots[idx as usize].info;
                if a.hook.admit(a.vm_tag, &info, env.now) == Admit::Later {
                    return false;
                }
            }
            self.slots[idx as usize].admitted = true;
        }
        loop {
            let r = &self.slots[idx as usize];
            if r.sub_next >= r.sub_total {
                return true;
            }
            let k = r.sub_next;
            let Some((chan, req)) = self.build_sub(env, idx, k) else {
                let r = &mut self.slots[idx as usize];
                r.status = Status::INTERNAL_ERROR;
                r.sub_total = r.sub_next;
                return true;
            };
            let Some(ch) = env.chans.get(chan) else {
                let r = &mut self.slots[idx as usize];
                r.status = Status::NAMESPACE_NOT_READY;
                r.sub_total = r.sub_next;
                return true;
            };
            match ch.submit(req) {
                Ok(()) => {
                    let r = &mut self.slots[idx as usize];
                    r.sub_next += 1;
                    r.sub_inflight += 1;
                    self.outstanding_io += 1;
                }
                // Channel full: the request comes back; it is rebuilt on the next kick.
                Err(_) => return false,
            }
        }
    }

    /// Retries commands waiting for admission or channel space, in order.
    pub(crate) fn kick(&mut self, env: &mut Env<'_>) {
        while let Some(&idx) = self.pending.front() {
            if !self.submit_io(env, idx) {
                break;
            }
            self.pending.pop_front();
            let r = &mut self.slots[idx as usize];
            r.state = RState::Exec;
            if r.sub_inflight == 0 {
                // Nothing went to the device (error while building): complete now.
                self.complete(idx);
            }
        }
    }

    /// Rebuilds the NSID → channel routes when the subsystem changed (new or removed
    /// namespaces, ANA state changes). One atomic load per poll when nothing changed.
    pub(crate) fn refresh_routes(&mut self, env: &mut Env<'_>) {
        // Fast path (every poll): one atomic load, no reference-count traffic.
        let sub = match &self.subsys {
            Some(sub) if sub.generation() != self.ns_gen => sub.clone(),
            _ => return,
        };
        let snap = sub.snapshot();
        let factory = self.shared.admission();
        let hostnqn = self.q.as_ref().map(|q| q.ctrl.hostnqn());
        let max = snap
            .namespaces
            .last()
            .map(|n| n.nsid as usize + 1)
            .unwrap_or(0);
        let mut routes: Vec<Option<NsRoute>> = vec![None; max];
        for ns in &snap.namespaces {
            let dev = match &hostnqn {
                Some(h) => factory.device_for(h, &ns.bdev),
                None => ns.bdev.clone(),
            };
            let Ok(chan) = env.chans.acquire(&dev) else {
                tracing::warn!(
                    nsid = ns.nsid,
                    "cannot open a channel; namespace unavailable on this queue"
                );
                continue;
            };
            let info = dev.info();
            let ana = snap.ana_state(self.port, ns.anagrpid);
            routes[ns.nsid as usize] = Some(NsRoute {
                chan,
                bs_shift: lbads(info.block_size),
                num_blocks: info.num_blocks,
                ana_status: match ana {
                    AnaState::Optimized | AnaState::NonOptimized => None,
                    other => other.io_status(),
                },
                read_only: info.read_only,
            });
        }
        for r in std::mem::replace(&mut self.routes, routes)
            .into_iter()
            .flatten()
        {
            env.chans.release(r.chan);
        }
        self.ns_gen = snap.gen;
        self.snapshot = Some(snap);
    }
}
