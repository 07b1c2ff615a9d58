//! Command intake: what a command transfers and whether it may run (`prepare`, at the
//! capsule header, before any data is accepted or an R2T is sent), then dispatch to the
//! fabrics, admin and I/O handlers (`execute`, once the data is in).
//!
//! Checks follow Base 2.0 §4.3.2 (SGL descriptors over fabrics: in-capsule data with an
//! offset descriptor, or a Transport SGL Data Block for R2T / C2HData transfers), §5.x
//! (opcode validity, MDTS), NVM Command Set 1.0 §3 (namespace, LBA range) and §8.1 (ANA).

use nvme_spec::cmd::{DatasetManagement, ReadWrite, WriteZeroes};
use nvme_spec::sqe::Psdt;
use nvme_spec::{AdminOpcode, FabricsType, NvmOpcode, Status};
use vmpath_bdev::IoType;

use crate::admission::IoInfo;
use crate::conn::{Conn, Dir, Env, QKind, RState, Work};

/// What a command needs before its data is accepted.
struct Plan {
    status: Status,
    dir: Dir,
    /// Bytes the command needs; `exact` demands the SGL length match it.
    need: Option<u32>,
    exact: bool,
    /// The command cannot run without a data buffer.
    requires_data: bool,
    work: Work,
    info: IoInfo,
}

impl Plan {
    fn new() -> Plan {
        Plan {
            status: Status::SUCCESS,
            dir: Dir::None,
            need: None,
            exact: false,
            requires_data: false,
            work: Work::None,
            info: IoInfo::NONE,
        }
    }

    fn fail(&mut self, s: Status) {
        if self.status.is_success() {
            self.status = s;
        }
    }
}

fn dir_of_opcode(op: u8) -> Dir {
    match op & 3 {
        1 => Dir::H2C,
        2 => Dir::C2H,
        _ => Dir::None,
    }
}

impl Conn {
    /// Decides the transfer of slot `idx`'s command and validates it; allocates its buffer.
    pub(crate) fn prepare(&mut self, _env: &mut Env<'_>, idx: u16, data_len: u32) {
        let sqe = self.slots[idx as usize].sqe;
        let mut p = Plan::new();
        if sqe.is_fabrics() {
            match FabricsType::from_u8(sqe.fctype()) {
                Some(FabricsType::Connect) => {
                    p.dir = Dir::H2C;
                    p.need = Some(nvme_spec::fabrics::Connect::DATA_LEN as u32);
                    p.exact = true;
                    p.requires_data = true;
                }
                Some(FabricsType::PropertyGet)
                | Some(FabricsType::PropertySet)
                | Some(FabricsType::Disconnect) => {}
                _ => p.fail(Status::INVALID_OPCODE),
            }
        } else {
            match self.q.as_ref().map(|q| q.kind) {
                None => p.fail(Status::COMMAND_SEQUENCE_ERROR),
                Some(QKind::Admin) => {
                    let op = sqe.opcode();
                    match AdminOpcode::from_u8(op) {
                        Some(AdminOpcode::Identify) | Some(AdminOpcode::GetLogPage) => {
                            p.dir = Dir::C2H;
                            p.requires_data = true;
                        }
                        Some(AdminOpcode::GetFeatures) | Some(AdminOpcode::SetFeatures) => {
                            p.dir = dir_of_opcode(op);
                        }
                        Some(AdminOpcode::KeepAlive)
                        | Some(AdminOpcode::AsyncEventRequest)
                        | Some(AdminOpcode::Abort) => {}
                        _ => p.fail(Status::INVALID_OPCODE),
                    }
                }
                Some(QKind::Io) => self.plan_io(&sqe, &mut p),
            }
        }

        // Data pointer: SGL descriptor 1 (Base 2.0 §4.3.2; NVMe/TCP uses in-capsule Data
        // Block descriptors with an offset, or Transport SGL Data Blocks).
        let sgl = sqe.sgl1();
        let sgl_len = sgl.length();
        let mut incapsule = false;
        let mut len = 0u32;
        if p.dir != Dir::None && (sgl_len > 0 || data_len > 0 || p.requires_data) {
            if sqe.psdt() == Psdt::Prp {
                p.fail(Status::INVALID_FIELD);
            } else if sgl.is_in_capsule() {
                incapsule = true;
                if p.dir != Dir::H2C {
                    p.fail(Status::SGL_DESCRIPTOR_TYPE_INVALID);
                } else if sgl.address() != 0 {
                    p.fail(Status::SGL_OFFSET_INVALID);
                } else if sgl_len != data_len {
                    p.fail(Status::DATA_SGL_LENGTH_INVALID);
                }
            } else if sgl.is_transport() {
                if data_len != 0 {
                    p.fail(Status::SGL_DESCRIPTOR_TYPE_INVALID);
                }
            } else {
                p.fail(Status::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            if sgl_len == 0 {
                p.fail(Status::DATA_SGL_LENGTH_INVALID);
            } else if sgl_len > self.shared.opts.max_io_size
                && !(sgl.is_in_capsule() && sgl_len <= self.shared.opts.in_capsule_data_size)
            {
                // Larger than MDTS.
                p.fail(Status::INVALID_FIELD);
            }
            len = match p.need {
                Some(n) if p.exact && sgl_len != n => {
                    p.fail(Status::DATA_SGL_LENGTH_INVALID);
                    0
                }
                Some(n) if sgl_len < n => {
                    p.fail(Status::DATA_SGL_LENGTH_INVALID);
                    0
                }
                Some(n) => n,
                None => sgl_len,
            };
        } else if p.dir == Dir::None && data_len > 0 {
            // Data for a command that takes none.
            p.fail(Status::INVALID_FIELD);
        }
        if !p.status.is_success() {
            len = 0;
        }
        let dir = if len == 0 { Dir::None } else { p.dir };
        if len > 0 {
            self.ensure_buf(idx, len);
        }
        let r = &mut self.slots[idx as usize];
        r.len = len;
        r.dir = dir;
        r.incapsule = incapsule;
        r.status = p.status;
        r.work = p.work;
        r.info = p.info;
    }

    /// Validates an NVM command set I/O command (NVM Command Set 1.0 §3).
    fn plan_io(&self, sqe: &nvme_spec::Sqe, p: &mut Plan) {
        let op = sqe.opcode();
        let Some(opc) = NvmOpcode::from_u8(op) else {
            p.fail(Status::INVALID_OPCODE);
            return;
        };
        if !matches!(
            opc,
            NvmOpcode::Read
                | NvmOpcode::Write
                | NvmOpcode::Flush
                | NvmOpcode::WriteZeroes
                | NvmOpcode::DatasetManagement
        ) {
            p.fail(Status::INVALID_OPCODE);
            return;
        }
        let nsid = sqe.nsid();
        let route = self.routes.get(nsid as usize).copied().flatten();
        let Some(rt) = route else {
            p.fail(Status::INVALID_NAMESPACE_OR_FORMAT);
            return;
        };
        if let Some(s) = rt.ana_status {
            p.fail(s);
            return;
        }
        p.info.nsid = nsid;
        let range_ok = |slba: u64, nlb: u32| {
            slba.checked_add(nlb as u64)
                .is_some_and(|end| end <= rt.num_blocks)
        };
        match opc {
            NvmOpcode::Read | NvmOpcode::Write => {
                let rw = ReadWrite::from_sqe(sqe);
                let is_write = opc == NvmOpcode::Write;
                let bytes = (rw.nlb as u64) << rt.bs_shift;
                if !range_ok(rw.slba, rw.nlb) {
                    p.fail(Status::LBA_OUT_OF_RANGE);
                } else if bytes > self.shared.opts.max_io_size as u64 {
                    p.fail(Status::INVALID_FIELD);
                } else if is_write && rt.read_only {
                    p.fail(Status::NAMESPACE_WRITE_PROTECTED);
                }
                let op = if is_write {
                    IoType::Write
                } else {
                    IoType::Read
                };
                p.dir = if is_write { Dir::H2C } else { Dir::C2H };
                p.need = Some(bytes as u32);
                p.exact = is_write;
                p.requires_data = true;
                p.work = Work::Rw {
                    op,
                    chan: rt.chan,
                    slba: rw.slba,
                    nlb: rw.nlb,
                };
                p.info.op = op;
                p.info.offset_blocks = rw.slba;
                p.info.num_blocks = rw.nlb as u64;
                p.info.bytes = bytes;
            }
            NvmOpcode::Flush => {
                p.work = Work::Flush { chan: rt.chan };
                p.info.op = IoType::Flush;
            }
            NvmOpcode::WriteZeroes => {
                let wz = WriteZeroes::from_sqe(sqe);
                if !range_ok(wz.slba, wz.nlb) {
                    p.fail(Status::LBA_OUT_OF_RANGE);
                } else if rt.read_only {
                    p.fail(Status::NAMESPACE_WRITE_PROTECTED);
                }
                p.work = Work::WriteZeroes {
                    chan: rt.chan,
                    slba: wz.slba,
                    nlb: wz.nlb,
                };
                p.info.op = IoType::WriteZeroes;
                p.info.offset_blocks = wz.slba;
                p.info.num_blocks = wz.nlb as u64;
            }
            NvmOpcode::DatasetManagement => {
                let d = DatasetManagement::from_sqe(sqe);
                if d.deallocate && rt.read_only {
                    p.fail(Status::NAMESPACE_WRITE_PROTECTED);
                }
                p.dir = Dir::H2C;
                p.need = Some(d.data_len() as u32);
                p.requires_data = true;
                p.work = Work::Dsm { chan: rt.chan };
                p.info.op = IoType::Unmap;
            }
            _ => p.fail(Status::INVALID_OPCODE),
        }
    }

    /// Runs a command whose data (if any) has arrived.
    pub(crate) fn execute(&mut self, env: &mut Env<'_>, idx: u16) {
        let sqe = self.slots[idx as usize].sqe;
        self.slots[idx as usize].state = RState::Exec;
        if sqe.is_fabrics() {
            self.exec_fabrics(env, idx);
            return;
        }
        match self.q.as_ref().map(|q| q.kind) {
            Some(QKind::Admin) => self.exec_admin(env, idx),
            Some(QKind::Io) => self.exec_io(env, idx),
            None => {
                self.slots[idx as usize].status = Status::COMMAND_SEQUENCE_ERROR;
                self.complete(idx);
            }
        }
    }
}
