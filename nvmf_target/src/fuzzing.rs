//! Fuzzing entry point for the command handler, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/commands.rs`) and the corpus regression test. Not a stable API.
//!
//! A connection without a socket is fed the input as if it came from the network, against
//! a subsystem with a small RAM namespace; its block-device channel is polled and its
//! output drained between pieces. Every byte the target sends must decode cleanly with the
//! host-side decoder, every request slot must be free at the end, and nothing may panic.
//!
//! Input layout: byte 0 = flags (bit 0 header digest, bit 1 data digest, bit 2 start on an
//! I/O queue already connected to an enabled controller, bit 3 disable SQ flow control),
//! byte 1 = read size used to split the stream (0 = all at once), then the stream. With
//! bit 2 set the harness sends the ICReq and the Connect itself, with the flagged digests.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use nvme_spec::fabrics::{Connect, PropertySet};
use nvme_spec::regs::{offset, Cc};
use nvme_spec::{AnaState, ConnectData};
use nvme_tcp::pdu::Role;
use nvme_tcp::{CapsuleCmd, Decoder, DecoderConfig, Encoder, Event, IcReq, IcResp, Pdu, Session};

use crate::chans::Channels;
use crate::conn::{Conn, Env, RState};
use crate::options::TargetOptions;
use crate::subsystem::{ListenAddr, NamespaceParams, SubsystemParams};
use crate::target::{ConnTicket, Shared};

/// Subsystem NQN of the harness.
pub const NQN: &str = "nqn.2016-06.io.vmpath:fuzz";
/// Host NQN of the harness.
pub const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000f022";

struct Harness {
    shared: Arc<Shared>,
    port: SocketAddr,
    live: Arc<AtomicUsize>,
    cntlid: u16,
    chans: Channels,
    now: u64,
    _admin: Conn,
}

fn capsule(enc: &Encoder, sqe: nvme_spec::Sqe, data: &[u8], out: &mut Vec<u8>) {
    let d: &[&[u8]] = if data.is_empty() { &[] } else { &[data] };
    // Well-formed PDUs of fixed size: encoding cannot fail.
    let _ = enc.push_pdu(&Pdu::CapsuleCmd(CapsuleCmd { sqe }), d, out);
}

fn icreq(hd: bool, dd: bool) -> (Vec<u8>, Session) {
    let req = IcReq {
        pfv: 0,
        hpda: 0,
        hdgst: hd,
        ddgst: dd,
        maxr2t: 0,
    };
    let mut b = vec![0u8; 128];
    let _ = Encoder::ic_req(&req, &mut b);
    let resp = IcResp {
        hdgst: hd,
        ddgst: dd,
        ..IcResp::default()
    };
    (b, Session::negotiated(Role::Host, &req, &resp))
}

fn connect_pdu(enc: &Encoder, qid: u16, cntlid: u16, cattr: u8, out: &mut Vec<u8>) {
    let c = Connect {
        recfmt: 0,
        qid,
        sqsize: 31,
        cattr,
        kato: 0,
    };
    let mut d = ConnectData::zeroed();
    d.set_cntlid(cntlid);
    let _ = d.set_subnqn(NQN);
    let _ = d.set_hostnqn(HOST);
    capsule(enc, c.to_sqe(1), d.as_bytes(), out);
}

impl Harness {
    fn new() -> Harness {
        let opts = TargetOptions {
            max_c2h_data: 4096,
            max_h2c_data: 4096,
            in_capsule_data_size: 4096,
            ..TargetOptions::default()
        };
        let shared = Shared::standalone(opts);
        let port: SocketAddr = "127.0.0.1:4420".parse().expect("literal address");
        let sub = shared.create_subsystem_for_tests(&SubsystemParams {
            nqn: NQN.into(),
            serial: "FUZZ".into(),
            model: "fuzz".into(),
            allow_any_host: true,
            hosts: vec![],
        });
        let dev = Arc::new(
            vmpath_bdev::malloc::MallocBdev::new("FuzzMalloc", 256, 512, Default::default())
                .expect("small malloc bdev"),
        );
        let _ = sub.add_namespace(NamespaceParams {
            bdev: dev,
            nsid: Some(1),
            anagrpid: None,
        });
        let _ = sub.add_listener(
            ListenAddr::from_socket_addr(port),
            port,
            AnaState::Optimized,
        );
        let live = Arc::new(AtomicUsize::new(0));
        // An admin queue with an enabled controller, for I/O queues to join.
        let mut admin = Conn::new(None, port, shared.clone(), ConnTicket::new(&live), 0);
        let mut chans = Channels::default();
        let (ic, s) = icreq(false, false);
        let enc = Encoder::new(s);
        let mut b = ic;
        connect_pdu(&enc, 0, 0xffff, 0, &mut b);
        let cc = Cc(0).with_en(1).with_iosqes(6).with_iocqes(4);
        capsule(
            &enc,
            PropertySet::to_sqe(offset::CC, false, cc.0 as u64, 2),
            &[],
            &mut b,
        );
        let mut env = Env {
            chans: &mut chans,
            now: 0,
            conn_idx: 0,
            reactor: 0,
        };
        admin.process(&mut env, &b);
        let cntlid = admin.q.as_ref().map(|q| q.ctrl.cntlid()).unwrap_or(0);
        let mut sink = Vec::new();
        admin.take_output(&mut sink);
        Harness {
            shared,
            port,
            live,
            cntlid,
            chans,
            now: 1,
            _admin: admin,
        }
    }
}

thread_local! {
    static HARNESS: std::cell::RefCell<Option<Harness>> = const { std::cell::RefCell::new(None) };
}

/// What the target answered to one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Commands completed successfully (CapsuleResp with success, or C2HData SUCCESS).
    pub ok: usize,
    /// Commands completed with an error status.
    pub failed: usize,
    /// C2HTermReqs sent.
    pub term_reqs: usize,
}

/// Checks that `out` is a valid controller-to-host byte stream (switching the decoder to
/// the negotiated digests at the ICResp).
fn check_output(dec: &mut Decoder, out: &[u8], st: &mut Stats) {
    let mut pos = 0;
    loop {
        match dec.next(&out[pos..]) {
            Ok(step) => {
                pos += step.consumed;
                match step.event {
                    None => break,
                    Some(Event::Header {
                        pdu: Pdu::IcResp(r),
                        ..
                    }) => dec.set_session(Session {
                        header_digest: r.hdgst,
                        data_digest: r.ddgst,
                        rx_pda: 0,
                        tx_pda: r.cpda,
                    }),
                    Some(Event::Header {
                        pdu: Pdu::CapsuleResp(r),
                        ..
                    }) => {
                        if r.cqe.status().is_success() {
                            st.ok += 1;
                        } else {
                            st.failed += 1;
                        }
                    }
                    Some(Event::Header {
                        pdu: Pdu::C2HData(d),
                        ..
                    }) if d.success => st.ok += 1,
                    Some(Event::Header {
                        pdu: Pdu::C2HTermReq(_),
                        ..
                    }) => st.term_reqs += 1,
                    Some(_) => {}
                }
            }
            Err(e) => panic!("target sent bytes the host decoder rejects: {e}"),
        }
    }
}

/// Runs one fuzz input (see the module docs) and says what the target answered.
pub fn command_stream(input: &[u8]) -> Stats {
    let (flags, split, stream) = match input {
        [a, b, rest @ ..] => (*a, *b as usize, rest),
        _ => return Stats::default(),
    };
    let mut st = Stats::default();
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(Harness::new);
        let (hd, dd) = (flags & 1 != 0, flags & 2 != 0);
        let mut conn = Conn::new(
            None,
            h.port,
            h.shared.clone(),
            ConnTicket::new(&h.live),
            h.now,
        );
        let mut host_dec = Decoder::new(DecoderConfig::host());
        let mut out = Vec::new();
        let mut prefix = Vec::new();
        if flags & 4 != 0 {
            let (ic, s) = icreq(hd, dd);
            prefix.extend_from_slice(&ic);
            let cattr = if flags & 8 != 0 {
                Connect::CATTR_SQ_FLOW_CONTROL_DISABLE
            } else {
                0
            };
            connect_pdu(&Encoder::new(s), 1, h.cntlid, cattr, &mut prefix);
        }
        let chunk = if split == 0 {
            stream.len().max(1)
        } else {
            split
        };
        let pieces = std::iter::once(&prefix[..]).chain(stream.chunks(chunk));
        for piece in pieces {
            h.now += 1_000;
            let mut env = Env {
                chans: &mut h.chans,
                now: h.now,
                conn_idx: 0,
                reactor: 0,
            };
            conn.process(&mut env, piece);
            conn.tick(&mut env);
            let now = h.now;
            h.chans
                .poll(now, &mut |c| conn.on_bdev_complete(c.tag as u16, &c, now));
            out.clear();
            conn.take_output(&mut out);
            check_output(&mut host_dec, &out, &mut st);
        }
        // Drain: complete whatever is at the device, then close.
        for _ in 0..4 {
            h.now += 1_000;
            let now = h.now;
            h.chans
                .poll(now, &mut |c| conn.on_bdev_complete(c.tag as u16, &c, now));
        }
        out.clear();
        conn.take_output(&mut out);
        check_output(&mut host_dec, &out, &mut st);
        conn.close_now("fuzz input done");
        assert_eq!(conn.outstanding_io, 0, "I/O left at the device");
        assert!(
            conn.slots.iter().all(|r| r.state == RState::Free),
            "request slot leaked"
        );
        conn.release_routes(&mut h.chans);
        h.chans.reap();
    });
    st
}
