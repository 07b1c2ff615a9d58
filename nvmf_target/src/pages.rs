//! The data structures the admin command set returns: Identify Controller / Namespace /
//! Active Namespace list / Namespace Identification Descriptors (Base 2.0 §5.17.2), and the
//! log pages Error Information, SMART / Health, Changed Namespace List, ANA (Base 2.0
//! §5.16.1) and Discovery (NVMe-oF 1.1 §5.3). Pure functions over the subsystem state.

use std::net::SocketAddr;

use nvme_spec::identify::{IdentifyController as Idc, NsIdDescriptor};
use nvme_spec::log::{adrfam, subtype, tcp_sectype, treq, trtype, AnaLogBuilder, SmartLog};
use nvme_spec::regs::Vs;
use nvme_spec::{
    DiscoveryLogEntry, DiscoveryLogHeader, IdentifyController, IdentifyNamespace, LbaFormat,
    NsIdDescList,
};
use vmpath_bdev::IoType;

use crate::ctrlr::{Controller, ERROR_LOG_ENTRIES};
use crate::options::TargetOptions;
use crate::subsystem::{Listener, Namespace, Snapshot, Subsystem};

/// Firmware revision reported in Identify Controller (the crate version).
pub(crate) fn firmware_revision() -> &'static str {
    let v = env!("CARGO_PKG_VERSION");
    &v[..v.len().min(8)]
}

/// Keep Alive granularity reported in KAS, in 100 ms units.
pub(crate) const KAS_100MS: u16 = 1;

/// Identify Controller (CNS 01h) for an I/O controller (`subsys` set) or a discovery
/// controller.
pub(crate) fn identify_controller(
    opts: &TargetOptions,
    ctrl: &Controller,
    subsys: Option<&Subsystem>,
) -> IdentifyController {
    let mut id = IdentifyController::zeroed();
    let (sn, mn, nqn) = match subsys {
        Some(s) => (s.serial(), s.model(), s.nqn()),
        None => ("", "vmpath discovery", nvme_spec::DISCOVERY_NQN),
    };
    // Lengths were validated when the subsystem was created.
    let _ = id.set_sn(sn);
    let _ = id.set_mn(mn);
    let _ = id.set_fr(firmware_revision());
    let _ = id.set_subnqn(nqn);
    id.set_rab(6);
    id.set_cntlid(ctrl.cntlid());
    id.set_ver(Vs::V2_0.0);
    id.set_ctratt(Idc::CTRATT_HOST_ID_128);
    id.set_mdts(opts.mdts());
    id.set_acl(3);
    id.set_aerl(opts.max_aer - 1);
    // One firmware slot, read-only.
    id.set_frmw((1 << 1) | 1);
    id.set_lpa(
        Idc::LPA_EXTENDED_DATA
            | if subsys.is_some() {
                Idc::LPA_SMART_PER_NS
            } else {
                0
            },
    );
    id.set_elpe((ERROR_LOG_ENTRIES - 1) as u8);
    id.set_kas(KAS_100MS);
    id.set_sqes(0x66);
    id.set_cqes(0x44);
    id.set_maxcmd(opts.max_io_queue_depth);
    id.set_sgls(Idc::SGLS_SUPPORTED | Idc::SGLS_OFFSET | Idc::SGLS_TRANSPORT);
    id.set_ioccsz(opts.ioccsz());
    id.set_iorcsz(1);
    id.set_icdoff(0);
    id.set_msdbd(1);
    // Disconnect command supported.
    id.set_ofcs(1);
    match subsys {
        Some(_) => {
            id.set_cntrltype(Idc::CNTRLTYPE_IO);
            id.set_cmic(Idc::CMIC_MULTI_PORT | Idc::CMIC_MULTI_CONTROLLER | Idc::CMIC_ANA);
            id.set_oaes(Idc::OAES_NS_ATTRIBUTE | Idc::OAES_ANA_CHANGE);
            id.set_anatt(10);
            id.set_anacap(
                Idc::ANACAP_OPTIMIZED
                    | Idc::ANACAP_NON_OPTIMIZED
                    | Idc::ANACAP_INACCESSIBLE
                    | Idc::ANACAP_GRPID_STATIC,
            );
            id.set_anagrpmax(opts.max_namespaces);
            id.set_nanagrpid(opts.max_namespaces);
            id.set_nn(opts.max_namespaces);
            // MNAN: with ANA reporting it must be non-zero and at most NN; Linux refuses the
            // controller otherwise ("Invalid MNAN value 0").
            id.set_mnan(opts.max_namespaces);
            id.set_oncs(Idc::ONCS_DSM | Idc::ONCS_WRITE_ZEROES);
            // Volatile write cache present; Flush with NSID FFFFFFFFh not supported (10b).
            id.set_vwc(Idc::VWC_PRESENT | 0b10 << 1);
        }
        None => {
            id.set_cntrltype(Idc::CNTRLTYPE_DISCOVERY);
            id.set_oaes(Idc::OAES_DISCOVERY_LOG_CHANGE);
        }
    }
    id
}

/// log2 of a power-of-two block size.
pub(crate) fn lbads(block_size: u32) -> u8 {
    block_size.trailing_zeros() as u8
}

/// Identify Namespace (CNS 00h) of an active namespace.
pub(crate) fn identify_namespace(ns: &Namespace) -> IdentifyNamespace {
    let info = ns.bdev.info();
    let mut id = IdentifyNamespace::zeroed();
    id.set_nsze(info.num_blocks);
    id.set_ncap(info.num_blocks);
    id.set_nuse(info.num_blocks);
    id.set_nlbaf(0);
    id.set_flbas(0);
    id.set_lbaf(0, LbaFormat::new(lbads(info.block_size), 0, 0));
    id.set_nmic(IdentifyNamespace::NMIC_SHARED);
    id.set_anagrpid(ns.anagrpid);
    id.set_nguid(info.uuid);
    if ns.bdev.supports(IoType::Unmap) && ns.bdev.unmap_zeroes() {
        id.set_dlfeat(
            IdentifyNamespace::DLFEAT_READ_ZEROES | IdentifyNamespace::DLFEAT_WRITE_ZEROES_DEAC,
        );
    }
    id.set_nsattr(info.read_only as u8);
    id.set_nvmcap(info.num_blocks as u128 * info.block_size as u128);
    id
}

/// Namespace Identification Descriptor list (CNS 03h): NGUID, UUID and CSI.
pub(crate) fn ns_descriptors(ns: &Namespace) -> NsIdDescList {
    let mut l = NsIdDescList::zeroed();
    let u = ns.bdev.info().uuid;
    // Three short descriptors always fit in 4096 bytes.
    let _ = l.push(NsIdDescriptor::Nguid(u));
    let _ = l.push(NsIdDescriptor::Uuid(u));
    let _ = l.push(NsIdDescriptor::Csi(nvme_spec::cmd::csi::NVM));
    l
}

/// SMART / Health log over the given namespaces (counters come from the block devices).
pub(crate) fn smart_log<'a>(namespaces: impl Iterator<Item = &'a Namespace>) -> SmartLog {
    let mut s = SmartLog::zeroed();
    let (mut rb, mut wb, mut rc, mut wc, mut errs) = (0u128, 0u128, 0u128, 0u128, 0u128);
    for ns in namespaces {
        let st = ns.bdev.stats();
        rb += st.bytes_read as u128;
        wb += st.bytes_written as u128;
        rc += st.read_ops as u128;
        wc += st.write_ops as u128;
        errs += st.errors as u128;
    }
    s.set_available_spare(100);
    s.set_available_spare_threshold(10);
    s.set_data_units_read(SmartLog::data_units(rb));
    s.set_data_units_written(SmartLog::data_units(wb));
    s.set_host_read_commands(rc);
    s.set_host_write_commands(wc);
    s.set_media_errors(errs);
    s
}

/// ANA log page (0Ch) as seen through the portal `port`: one descriptor per ANA group that
/// has namespaces, with their NSIDs unless `rgo` (Return Groups Only).
pub(crate) fn ana_log(snap: &Snapshot, port: SocketAddr, rgo: bool, out: &mut Vec<u8>) {
    let mut b = AnaLogBuilder::new(out, snap.ana_change_count);
    let mut nsids: Vec<u32> = Vec::new();
    for grp in snap.ana_groups() {
        nsids.clear();
        if !rgo {
            nsids.extend(
                snap.namespaces
                    .iter()
                    .filter(|n| n.anagrpid == grp)
                    .map(|n| n.nsid),
            );
        }
        b.group(
            grp,
            snap.ana_state(port, grp),
            snap.ana_change_count,
            &nsids,
        );
    }
}

/// One discovery log entry for a subsystem listener.
pub(crate) fn discovery_entry(
    nqn: &str,
    l: &Listener,
    portid: u16,
    asqsz: u16,
) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry::zeroed();
    e.set_trtype(trtype::TCP);
    e.set_adrfam(if l.sock.is_ipv4() {
        adrfam::IPV4
    } else {
        adrfam::IPV6
    });
    e.set_subtype(subtype::NVME);
    e.set_treq(treq::SECURE_NOT_REQUIRED | treq::SQFLOW_DISABLE_SUPPORTED);
    e.set_portid(portid);
    e.set_cntlid(0xffff);
    e.set_asqsz(asqsz);
    let _ = e.set_trsvcid(&l.sock.port().to_string());
    let _ = e.set_subnqn(nqn);
    let _ = e.set_traddr(&l.sock.ip().to_string());
    e.set_tcp_sectype(tcp_sectype::NONE);
    e
}

/// The discovery log page (70h): header then the entries.
pub(crate) fn discovery_log(genctr: u64, entries: &[DiscoveryLogEntry], out: &mut Vec<u8>) {
    let mut h = DiscoveryLogHeader::zeroed();
    h.set_genctr(genctr);
    h.set_numrec(entries.len() as u64);
    h.set_recfmt(0);
    out.clear();
    out.extend_from_slice(h.as_bytes());
    for e in entries {
        out.extend_from_slice(e.as_bytes());
    }
}

/// Error Information log: the controller's entries, newest first, zero padded.
pub(crate) fn error_log(ctrl: &Controller, out: &mut Vec<u8>) {
    out.clear();
    let st = ctrl.lock();
    for e in &st.errors {
        out.extend_from_slice(e.as_bytes());
    }
    out.resize(ERROR_LOG_ENTRIES * 64, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use vmpath_bdev::malloc::MallocBdev;
    use vmpath_bdev::BlockDevice;

    #[test]
    fn identify_namespace_fields() {
        let dev: Arc<dyn BlockDevice> =
            Arc::new(MallocBdev::new("m", 256, 4096, Default::default()).unwrap());
        let ns = Namespace {
            nsid: 3,
            bdev: dev.clone(),
            anagrpid: 7,
        };
        let id = identify_namespace(&ns);
        assert_eq!(id.nsze(), 256);
        assert_eq!(id.block_size(), 4096);
        assert_eq!(id.anagrpid(), 7);
        assert_eq!(id.nguid(), dev.info().uuid);
        assert_ne!(id.dlfeat() & IdentifyNamespace::DLFEAT_READ_ZEROES, 0);
        let d = ns_descriptors(&ns);
        let v: Vec<_> = d.iter().collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], NsIdDescriptor::Nguid(dev.info().uuid));
    }

    #[test]
    fn discovery_log_layout() {
        let sock: SocketAddr = "127.0.0.1:4420".parse().unwrap();
        let l = Listener {
            addr: crate::ListenAddr::from_socket_addr(sock),
            sock,
            default_ana: nvme_spec::AnaState::Optimized,
            ana: Default::default(),
        };
        let e = discovery_entry("nqn.2016-06.io.vmpath:a", &l, 1, 32);
        let mut out = Vec::new();
        discovery_log(5, &[e, e], &mut out);
        assert_eq!(out.len(), 3 * 1024);
        let h = DiscoveryLogHeader::from_slice(&out[..1024]).unwrap();
        assert_eq!((h.genctr(), h.numrec()), (5, 2));
        let e = DiscoveryLogEntry::from_slice(&out[1024..2048]).unwrap();
        assert_eq!(e.trsvcid().unwrap(), "4420");
        assert_eq!(e.traddr().unwrap(), "127.0.0.1");
        assert_eq!(e.subnqn().unwrap(), "nqn.2016-06.io.vmpath:a");
    }
}
