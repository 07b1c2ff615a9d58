//! The admin command set of a fabrics controller (Base 2.0 §5): Identify, Get Log Page,
//! Get / Set Features, Keep Alive, Asynchronous Event Request, Abort.

use nvme_spec::cmd::{cns, Features, GetLogPage, Identify};
use nvme_spec::features::{aec, FeatureId, NumberOfQueues, VWC_WCE};
use nvme_spec::log::{changed_ns_list, ANA_LSP_RGO};
use nvme_spec::{AdminOpcode, LogPageId, NsIdList, Status};

use crate::conn::{Conn, Env, RState};
use crate::ctrlr::{AEC_SUPPORTED_DISCOVERY, AEC_SUPPORTED_IO};
use crate::pages;

impl Conn {
    pub(crate) fn exec_admin(&mut self, env: &mut Env<'_>, idx: u16) {
        let sqe = self.slots[idx as usize].sqe;
        let status = match AdminOpcode::from_u8(sqe.opcode()) {
            Some(AdminOpcode::Identify) => self.identify(idx),
            Some(AdminOpcode::GetLogPage) => self.get_log_page(idx),
            Some(AdminOpcode::GetFeatures) => self.get_features(idx),
            Some(AdminOpcode::SetFeatures) => self.set_features(idx),
            Some(AdminOpcode::KeepAlive) => {
                self.last_ka_ns = env.now;
                Status::SUCCESS
            }
            Some(AdminOpcode::AsyncEventRequest) => {
                let parked = self.slots.iter().filter(|r| r.state == RState::Aer).count();
                if parked >= self.shared.opts.max_aer as usize {
                    Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED
                } else {
                    self.slots[idx as usize].state = RState::Aer;
                    // An event may already be waiting.
                    if self.q.as_ref().is_some_and(|q| q.ctrl.has_events()) {
                        self.deliver_pending_events();
                    }
                    return;
                }
            }
            Some(AdminOpcode::Abort) => {
                // Best effort is allowed: report "not aborted" (DW0 bit 0 set, §5.1).
                self.slots[idx as usize].dw0 = 1;
                Status::SUCCESS
            }
            _ => Status::INVALID_OPCODE,
        };
        self.slots[idx as usize].status = status;
        self.complete(idx);
    }

    pub(crate) fn deliver_pending_events(&mut self) {
        let Some(q) = &self.q else { return };
        let ctrl = q.ctrl.clone();
        for i in 0..self.slots.len() {
            if self.slots[i].state != RState::Aer {
                continue;
            }
            let Some(ev) = ctrl.take_event() else { break };
            self.slots[i].dw0 = ev.to_dw0();
            self.slots[i].status = Status::SUCCESS;
            self.complete(i as u16);
        }
    }

    /// Copies `data` into the slot's transfer buffer (zero filling the rest).
    fn put_data(&mut self, idx: u16, data: &[u8]) {
        let out = self.slots[idx as usize].data_mut();
        let n = data.len().min(out.len());
        out[..n].copy_from_slice(&data[..n]);
        out[n..].fill(0);
    }

    fn identify(&mut self, idx: u16) -> Status {
        let Some(q) = &self.q else {
            return Status::COMMAND_SEQUENCE_ERROR;
        };
        let ctrl = q.ctrl.clone();
        let sqe = self.slots[idx as usize].sqe;
        let id = Identify::from_sqe(&sqe);
        let nsid = sqe.nsid();
        let sub = self.subsys.clone();
        let opts = &self.shared.opts;
        match (id.cns, &sub) {
            (cns::CONTROLLER, _) => {
                let d = pages::identify_controller(opts, &ctrl, sub.as_deref());
                self.put_data(idx, d.as_bytes());
                Status::SUCCESS
            }
            (cns::NAMESPACE, Some(s)) => {
                if nsid == 0 || nsid == u32::MAX || nsid > opts.max_namespaces {
                    return Status::INVALID_NAMESPACE_OR_FORMAT;
                }
                let snap = s.snapshot();
                match snap.namespace(nsid) {
                    Some(ns) => {
                        let d = pages::identify_namespace(ns);
                        self.put_data(idx, d.as_bytes());
                    }
                    // Inactive NSID: a zero-filled structure (§5.17.2.1).
                    None => self.put_data(idx, &[]),
                }
                Status::SUCCESS
            }
            (cns::ACTIVE_NAMESPACES, Some(s)) => {
                if nsid >= 0xffff_fffe {
                    return Status::INVALID_NAMESPACE_OR_FORMAT;
                }
                let snap = s.snapshot();
                let ids: Vec<u32> = snap.namespaces.iter().map(|n| n.nsid).collect();
                let l = NsIdList::active_after(&ids, nsid);
                self.put_data(idx, l.as_bytes());
                Status::SUCCESS
            }
            (cns::NS_ID_DESCRIPTORS, Some(s)) => {
                if nsid == 0 || nsid == u32::MAX || nsid > opts.max_namespaces {
                    return Status::INVALID_NAMESPACE_OR_FORMAT;
                }
                let snap = s.snapshot();
                match snap.namespace(nsid) {
                    Some(ns) => {
                        let d = pages::ns_descriptors(ns);
                        self.put_data(idx, d.as_bytes());
                        Status::SUCCESS
                    }
                    None => Status::INVALID_NAMESPACE_OR_FORMAT,
                }
            }
            _ => Status::INVALID_FIELD,
        }
    }

    fn get_log_page(&mut self, idx: u16) -> Status {
        let Some(q) = &self.q else {
            return Status::COMMAND_SEQUENCE_ERROR;
        };
        let ctrl = q.ctrl.clone();
        let port = self.port;
        let sqe = self.slots[idx as usize].sqe;
        let g = GetLogPage::from_sqe(&sqe);
        let want = g.len_bytes();
        let have = self.slots[idx as usize].len as u64;
        if want > have {
            return Status::DATA_SGL_LENGTH_INVALID;
        }
        if g.ot || !g.lpo.is_multiple_of(4) {
            return Status::INVALID_FIELD;
        }
        let mut page: Vec<u8> = Vec::new();
        let sub = self.subsys.clone();
        match (LogPageId::from_u8(g.lid), &sub) {
            (Some(LogPageId::ErrorInformation), _) => pages::error_log(&ctrl, &mut page),
            (Some(LogPageId::SmartHealth), Some(s)) => {
                let snap = s.snapshot();
                let nsid = sqe.nsid();
                let log = if nsid == 0 || nsid == u32::MAX {
                    pages::smart_log(snap.namespaces.iter())
                } else {
                    match snap.namespace(nsid) {
                        Some(ns) => pages::smart_log(std::iter::once(ns)),
                        None => return Status::INVALID_NAMESPACE_OR_FORMAT,
                    }
                };
                page.extend_from_slice(log.as_bytes());
            }
            (Some(LogPageId::ChangedNamespaceList), Some(_)) => {
                let mut st = ctrl.lock();
                let list: Vec<u32> = if st.changed_overflow {
                    vec![0; nvme_spec::NsIdList::CAPACITY + 1]
                } else {
                    st.changed_ns.iter().copied().collect()
                };
                // Reading the log clears it (§5.16.1.5).
                st.changed_ns.clear();
                st.changed_overflow = false;
                drop(st);
                page.extend_from_slice(changed_ns_list(&list).as_bytes());
            }
            (Some(LogPageId::Ana), Some(s)) => {
                let snap = s.snapshot();
                pages::ana_log(&snap, port, g.lsp & ANA_LSP_RGO != 0, &mut page);
            }
            (Some(LogPageId::Discovery), None) => {
                self.shared.discovery_log(ctrl.hostnqn(), &mut page);
            }
            _ => return Status::INVALID_LOG_PAGE,
        }
        if g.lpo > page.len() as u64 {
            return Status::INVALID_FIELD;
        }
        let start = g.lpo as usize;
        let end = page.len().min(start + want as usize);
        let chunk = page[start..end].to_vec();
        // Return exactly NUMD dwords.
        self.slots[idx as usize].len = want as u32;
        self.put_data(idx, &chunk);
        if !g.rae {
            ctrl.log_read(g.lid);
        }
        Status::SUCCESS
    }

    fn get_features(&mut self, idx: u16) -> Status {
        let Some(q) = &self.q else {
            return Status::COMMAND_SEQUENCE_ERROR;
        };
        let ctrl = q.ctrl.clone();
        let f = Features::from_sqe(&self.slots[idx as usize].sqe);
        let discovery = ctrl.is_discovery();
        let dw0 = match FeatureId::from_u8(f.fid) {
            Some(FeatureId::KeepAliveTimer) => ctrl.kato_ms(),
            Some(FeatureId::AsyncEventConfig) => ctrl.lock().aec,
            Some(FeatureId::NumberOfQueues) if !discovery => {
                let n = ctrl.lock().num_io_queues as u32;
                NumberOfQueues { nsq: n, ncq: n }.to_dw()
            }
            Some(FeatureId::VolatileWriteCache) if !discovery => ctrl.lock().wce as u32,
            Some(FeatureId::Arbitration) if !discovery => 0,
            _ => return Status::INVALID_FIELD,
        };
        self.slots[idx as usize].dw0 = dw0;
        Status::SUCCESS
    }

    fn set_features(&mut self, idx: u16) -> Status {
        let Some(q) = &self.q else {
            return Status::COMMAND_SEQUENCE_ERROR;
        };
        let ctrl = q.ctrl.clone();
        let f = Features::from_sqe(&self.slots[idx as usize].sqe);
        if f.save {
            return Status::FEATURE_NOT_SAVEABLE;
        }
        let discovery = ctrl.is_discovery();
        match FeatureId::from_u8(f.fid) {
            Some(FeatureId::KeepAliveTimer) => {
                // Rounded up to the KAS granularity (100 ms units).
                let gran = pages::KAS_100MS as u32 * 100;
                let v = f.cdw11.div_ceil(gran).saturating_mul(gran);
                ctrl.set_kato_ms(v);
                self.slots[idx as usize].dw0 = v;
                Status::SUCCESS
            }
            Some(FeatureId::AsyncEventConfig) => {
                let supported = if discovery {
                    AEC_SUPPORTED_DISCOVERY
                } else {
                    AEC_SUPPORTED_IO
                };
                if f.cdw11 & !(supported | aec::SMART_MASK) != 0 {
                    return Status::INVALID_FIELD;
                }
                ctrl.lock().aec = f.cdw11 & supported;
                Status::SUCCESS
            }
            Some(FeatureId::NumberOfQueues) if !discovery => {
                let want = NumberOfQueues::from_dw(f.cdw11);
                if f.cdw11 & 0xffff == 0xffff || f.cdw11 >> 16 == 0xffff {
                    return Status::INVALID_FIELD;
                }
                let mut st = ctrl.lock();
                if !st.io_qids.is_empty() {
                    // Only before I/O queues exist (§5.27.1.5).
                    return Status::COMMAND_SEQUENCE_ERROR;
                }
                let max = self.shared.opts.max_io_queues as u32;
                let n = want.nsq.max(want.ncq).min(max);
                st.num_io_queues = n as u16;
                drop(st);
                self.slots[idx as usize].dw0 = NumberOfQueues { nsq: n, ncq: n }.to_dw();
                Status::SUCCESS
            }
            Some(FeatureId::VolatileWriteCache) if !discovery => {
                ctrl.lock().wce = f.cdw11 & VWC_WCE != 0;
                Status::SUCCESS
            }
            Some(_) | None => Status::INVALID_FIELD,
        }
    }
}
