//! Fabrics commands (NVMe-oF 1.1 §3.3): Connect (creating a controller on the admin queue,
//! joining one on an I/O queue), Property Get / Set of CAP, VS, CC, CSTS (controller enable,
//! reset and shutdown, Base 2.0 §3.1.3 / §3.5), Disconnect.

use std::sync::Arc;

use nvme_spec::fabrics::{
    connect_invalid_param_dw0, connect_offset, connect_success_dw0, Connect, PropertyGet,
    PropertySet, CNTLID_DYNAMIC,
};
use nvme_spec::regs::{offset, property_size, Cap, Cc, Csts, Vs};
use nvme_spec::{ConnectData, FabricsType, Status, DISCOVERY_NQN};

use crate::admission::QueueInfo;
use crate::conn::{Conn, Env, QKind, Queue};
use crate::ctrlr::Controller;

/// CAP.TO in 500 ms units.
const CAP_TIMEOUT: u32 = 30;

/// A refused Connect: status and DW0.
struct Refuse(Status, u32);

fn bad_param(in_data: bool, off: u16) -> Refuse {
    Refuse(
        Status::CONNECT_INVALID_PARAMETERS,
        connect_invalid_param_dw0(in_data, off),
    )
}

impl Conn {
    pub(crate) fn exec_fabrics(&mut self, env: &mut Env<'_>, idx: u16) {
        let sqe = self.slots[idx as usize].sqe;
        let status = match FabricsType::from_u8(sqe.fctype()) {
            Some(FabricsType::Connect) => match self.connect(env, idx) {
                Ok(dw0) => {
                    self.slots[idx as usize].dw0 = dw0;
                    Status::SUCCESS
                }
                Err(Refuse(s, dw0)) => {
                    self.slots[idx as usize].dw0 = dw0;
                    s
                }
            },
            Some(FabricsType::PropertyGet) => self.property_get(idx),
            Some(FabricsType::PropertySet) => self.property_set(idx),
            Some(FabricsType::Disconnect) => match self.q.as_ref().map(|q| q.kind) {
                None => Status::COMMAND_SEQUENCE_ERROR,
                Some(QKind::Admin) => Status::INVALID_QUEUE_TYPE,
                Some(QKind::Io) => {
                    // Respond, then close once the response is out.
                    self.begin_drain();
                    Status::SUCCESS
                }
            },
            _ => Status::INVALID_OPCODE,
        };
        self.slots[idx as usize].status = status;
        self.complete(idx);
    }

    fn connect(&mut self, env: &mut Env<'_>, idx: u16) -> Result<u32, Refuse> {
        if self.q.is_some() {
            return Err(Refuse(Status::COMMAND_SEQUENCE_ERROR, 0));
        }
        let r = &self.slots[idx as usize];
        let c = Connect::from_sqe(&r.sqe);
        let Some(data) = ConnectData::from_slice(r.data()) else {
            return Err(Refuse(Status::DATA_SGL_LENGTH_INVALID, 0));
        };
        if c.recfmt != 0 {
            return Err(Refuse(Status::CONNECT_INCOMPATIBLE_FORMAT, 0));
        }
        let subnqn = data
            .subnqn()
            .map_err(|_| bad_param(true, connect_offset::SUBNQN))?
            .to_string();
        let hostnqn = data
            .hostnqn()
            .map_err(|_| bad_param(true, connect_offset::HOSTNQN))?
            .to_string();
        if crate::subsystem::validate_nqn(&hostnqn).is_err() {
            return Err(bad_param(true, connect_offset::HOSTNQN));
        }
        let opts = &self.shared.opts;
        let max_entries = if c.qid == 0 {
            opts.max_admin_queue_depth
        } else {
            opts.max_io_queue_depth
        };
        if c.sqsize == 0 || c.sqsize >= max_entries {
            return Err(bad_param(false, connect_offset::SQSIZE));
        }
        let sqhd_disabled = c.cattr & Connect::CATTR_SQ_FLOW_CONTROL_DISABLE != 0;
        let discovery = subnqn == DISCOVERY_NQN;
        let subsys = if discovery {
            None
        } else {
            let s = self
                .shared
                .subsystem(&subnqn)
                .filter(|s| s.listens_on(self.port))
                .ok_or_else(|| bad_param(true, connect_offset::SUBNQN))?;
            if !s.host_allowed(&hostnqn) {
                tracing::info!(subnqn = %subnqn, hostnqn = %hostnqn, "Connect refused: host not allowed");
                return Err(Refuse(Status::CONNECT_INVALID_HOST, 0));
            }
            Some(s)
        };
        let entries = c.sqsize + 1;
        if c.qid == 0 {
            if data.cntlid() != CNTLID_DYNAMIC {
                return Err(bad_param(true, connect_offset::CNTLID));
            }
            let ctrl = match &subsys {
                Some(s) => {
                    let mut st = s.lock();
                    let id = s
                        .alloc_cntlid(&mut st)
                        .ok_or(Refuse(Status::CONNECT_CONTROLLER_BUSY, 0))?;
                    let ctrl = Arc::new(Controller::new(
                        id,
                        Some(s.clone()),
                        hostnqn,
                        data.hostid(),
                        self.port,
                        c.kato,
                        opts.max_io_queues,
                    ));
                    st.controllers.push(ctrl.clone());
                    ctrl
                }
                None => self
                    .shared
                    .new_discovery_controller(hostnqn, data.hostid(), self.port, c.kato)
                    .ok_or(Refuse(Status::CONNECT_CONTROLLER_BUSY, 0))?,
            };
            let cntlid = ctrl.cntlid();
            tracing::info!(cntlid, subnqn = %subnqn, host = %ctrl.hostnqn(), kato_ms = c.kato, "controller created");
            self.q = Some(Queue {
                kind: QKind::Admin,
                qid: 0,
                size: entries,
                ctrl,
                sqhd_disabled,
            });
            self.subsys = subsys;
            self.last_ka_ns = env.now;
            self.sq_head = 1 % entries;
            self.set_slots(entries as usize + 1);
            return Ok(connect_success_dw0(cntlid, 0));
        }
        // I/O queue: join an existing controller of this host.
        let Some(s) = subsys else {
            return Err(bad_param(false, connect_offset::QID));
        };
        let ctrl = s
            .find_controller(data.cntlid())
            .filter(|c| c.hostnqn() == hostnqn && !c.is_dead())
            .ok_or_else(|| bad_param(true, connect_offset::CNTLID))?;
        if !ctrl.is_ready() {
            return Err(Refuse(Status::COMMAND_SEQUENCE_ERROR, 0));
        }
        {
            let mut st = ctrl.lock();
            if c.qid > st.num_io_queues || st.io_qids.contains(&c.qid) {
                return Err(bad_param(false, connect_offset::QID));
            }
            st.io_qids.insert(c.qid);
        }
        let qinfo = QueueInfo {
            subnqn: s.nqn().to_string(),
            hostnqn: hostnqn.clone(),
            cntlid: ctrl.cntlid(),
            qid: c.qid,
            reactor: env.reactor,
        };
        self.admission = Some(self.shared.admission().for_queue(&qinfo));
        let cntlid = ctrl.cntlid();
        self.q = Some(Queue {
            kind: QKind::Io,
            qid: c.qid,
            size: entries,
            ctrl,
            sqhd_disabled,
        });
        self.subsys = Some(s);
        self.sq_head = 1 % entries;
        self.set_slots(entries as usize + 1);
        self.refresh_routes(env);
        Ok(connect_success_dw0(cntlid, 0))
    }

    fn cap(&self) -> Cap {
        let mqes = self.shared.opts.max_io_queue_depth - 1;
        Cap(0)
            .with_mqes(mqes as u32)
            .with_cqr(1)
            .with_to(CAP_TIMEOUT)
            .with_css(Cap::CSS_NVM)
            .with_mpsmin(0)
            .with_mpsmax(0)
    }

    fn property_get(&mut self, idx: u16) -> Status {
        let Some(q) = &self.q else {
            return Status::COMMAND_SEQUENCE_ERROR;
        };
        if q.kind != QKind::Admin {
            return Status::INVALID_FIELD;
        }
        let ctrl = q.ctrl.clone();
        let p = PropertyGet::from_sqe(&self.slots[idx as usize].sqe);
        if p.attrib & !7 != 0 || p.attrib & 7 > 1 {
            return Status::INVALID_FIELD;
        }
        let size = if p.size8 { 8 } else { 4 };
        if property_size(p.offset) != Some(size) {
            return Status::INVALID_FIELD;
        }
        let v: u64 = match p.offset {
            offset::CAP => self.cap().0,
            offset::VS => Vs::V2_0.0 as u64,
            offset::CC => ctrl.lock().cc.0 as u64,
            offset::CSTS => ctrl.lock().csts.0 as u64,
            _ => return Status::INVALID_FIELD,
        };
        let r = &mut self.slots[idx as usize];
        r.dw0 = v as u32;
        r.dw1 = (v >> 32) as u32;
        Status::SUCCESS
    }

    fn property_set(&mut self, idx: u16) -> Status {
        let Some(q) = &self.q else {
            return Status::COMMAND_SEQUENCE_ERROR;
        };
        if q.kind != QKind::Admin {
            return Status::INVALID_FIELD;
        }
        let ctrl = q.ctrl.clone();
        let p = PropertySet::from_sqe(&self.slots[idx as usize].sqe);
        if p.attrib & !7 != 0 || p.size8 || p.offset != offset::CC {
            // Only CC is writable over fabrics here (NSSR not supported).
            return Status::INVALID_FIELD;
        }
        let new = Cc(p.value as u32);
        if new.0 & Cc::RESERVED_MASK != 0 {
            return Status::INVALID_FIELD;
        }
        let mut st = ctrl.lock();
        let old = st.cc;
        if !old.enabled() && new.enabled() {
            let io = !ctrl.is_discovery();
            if new.mps() != 0
                || new.css() != 0
                || (io && (new.iosqes() != 6 || new.iocqes() != 4))
                || new.ams() != 0
            {
                return Status::INVALID_FIELD;
            }
            st.csts = Csts(st.csts.0).with_rdy(1).with_shst(Csts::SHST_NORMAL);
            ctrl.set_ready(true);
            tracing::debug!(cntlid = ctrl.cntlid(), "controller enabled");
        } else if old.enabled() && !new.enabled() {
            // Controller reset: I/O queues go away (they close when they see !ready).
            st.csts = Csts(0);
            ctrl.set_ready(false);
            st.io_qids.clear();
            tracing::debug!(cntlid = ctrl.cntlid(), "controller reset");
        }
        if new.shn() != Cc::SHN_NONE && old.shn() == Cc::SHN_NONE {
            // Shutdown: stop I/O processing; nothing is cached, so it completes at once.
            ctrl.set_ready(false);
            st.csts = st.csts.with_shst(Csts::SHST_COMPLETE);
            tracing::debug!(cntlid = ctrl.cntlid(), "controller shut down");
        } else if new.shn() == Cc::SHN_NONE && old.shn() != Cc::SHN_NONE {
            st.csts = st.csts.with_shst(Csts::SHST_NORMAL);
            if new.enabled() && st.csts.ready() {
                ctrl.set_ready(true);
            }
        }
        st.cc = new;
        Status::SUCCESS
    }
}
