//! Incremental NVMe/TCP PDU decoder (TP 8000 sections 3.6.1-3.6.2, 3.6.4).
//!
//! Feed it whatever a socket read returned, split anywhere. It yields
//! [`Event`]s: first [`Event::Header`] with the typed PDU header, then, for
//! PDUs that carry data, one or more [`Event::Data`] slices that borrow the
//! caller's input (so the caller copies them straight to the destination
//! buffer), then [`Event::DataEnd`] (data digest verified when enabled) or
//! [`Event::DataDigestError`]. Header bytes are copied into a 132-byte
//! internal buffer only when a header is split across reads; data is never
//! copied or buffered. Nothing is allocated.
//!
//! Every header field is validated before it is trusted, lowest offset first,
//! and every violation is a [`ProtocolError`] carrying the TermReq FES/FEI.
//! After a [`ProtocolError`] the decoder stays failed (the connection must be
//! terminated); a data digest mismatch is not fatal.

use nvme_spec::{Cqe, Sqe};

use crate::error::ProtocolError;
use crate::pdu::*;

/// Limits and policy of a [`Decoder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Which side receives: a controller accepts only host-to-controller PDUs,
    /// a host only controller-to-host PDUs.
    pub role: Role,
    /// Largest in-capsule data in a CapsuleCmd (controller side; exceeding it
    /// is FES Data Transfer Limit Exceeded).
    pub max_incapsule_data: u32,
    /// Largest DATAL of an H2CData PDU: the MAXH2CDATA the controller advertised.
    pub max_h2c_data: u32,
    /// Largest DATAL of a C2HData PDU (host side).
    pub max_c2h_data: u32,
    /// Reject PDUs whose reserved header bytes are not zero.
    pub check_reserved: bool,
}

impl DecoderConfig {
    /// Controller-side defaults: 8 KiB in-capsule data, 128 KiB MAXH2CDATA.
    pub const fn controller() -> Self {
        DecoderConfig {
            role: Role::Controller,
            max_incapsule_data: 8192,
            max_h2c_data: 128 * 1024,
            max_c2h_data: 0,
            check_reserved: true,
        }
    }
    /// Host-side defaults: C2HData of any length (data is streamed, not buffered).
    pub const fn host() -> Self {
        DecoderConfig {
            role: Role::Host,
            max_incapsule_data: 0,
            max_h2c_data: 0,
            max_c2h_data: u32::MAX,
            check_reserved: true,
        }
    }
}

/// One decoding result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete, validated PDU header. `data_len` bytes of PDU data follow
    /// as [`Event::Data`] (then [`Event::DataEnd`]); when 0, the PDU is complete.
    Header {
        /// The typed header.
        pdu: Pdu,
        /// Length of the PDU data (in-capsule data, DATAL, TermReq error data).
        data_len: u32,
    },
    /// A piece of PDU data: `data` starts at byte `offset` of this PDU's data.
    Data {
        /// Offset within the PDU data (add DATAO for the offset in the command).
        offset: u32,
        /// The bytes, borrowed from the input.
        data: &'a [u8],
    },
    /// The PDU's data is complete and its data digest (if any) matched.
    DataEnd,
    /// The PDU's data is complete but its data digest did not match. The
    /// stream stays in sync; complete the command with Transient Transport Error.
    DataDigestError {
        /// CRC32C computed over the received data.
        computed: u32,
        /// Digest in the PDU.
        received: u32,
    },
}

/// What [`Decoder::next`] did: it consumed `consumed` bytes of the input and
/// produced at most one event. `event == None` means all input was consumed
/// and more is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Bytes of the input consumed.
    pub consumed: usize,
    /// The event, if one completed.
    pub event: Option<Event<'a>>,
}

/// What the common header told about the PDU being received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HdrInfo {
    ty: u8,
    flags: u8,
    hlen: u8,
    /// HLEN plus header digest.
    full: u8,
    pad: u8,
    data_len: u32,
    ddgst: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Header,
    Pad,
    Data,
    Digest,
    End,
    Failed(ProtocolError),
}

/// The incremental decoder of one connection's receive direction.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: DecoderConfig,
    session: Session,
    ic_done: bool,
    st: St,
    hdr: [u8; MAX_HLEN + DIGEST_LEN],
    have: usize,
    info: Option<HdrInfo>,
    pad_left: usize,
    data_left: u32,
    data_off: u32,
    ddgst: bool,
    crc: u32,
    dig: [u8; DIGEST_LEN],
    dig_have: usize,
    /// Per PDU type (low 4 bits): what a well-formed header of the fast path
    /// looks like under the current session and limits.
    rules: [Rule; 16],
    /// Bitmap of PDO values aligned to the receive PDA.
    pdo_ok: [u64; 4],
}

/// Fast-path expectations for one PDU type (see [`Decoder::check_ch_fast`]).
#[derive(Debug, Clone, Copy, Default)]
struct Rule {
    /// The type is accepted in the current phase and direction.
    fast: bool,
    hlen: u8,
    /// HLEN plus header digest.
    full: u8,
    /// The type may carry data.
    data: bool,
    /// Flag bits that must equal `fixed_val`: invalid bits and HDGSTF.
    fixed_mask: u8,
    fixed_val: u8,
    max_data: u32,
}

#[inline(always)]
fn le16(b: &[u8], o: usize) -> u16 {
    nvme_spec::bytes::get(b, o)
}
#[inline(always)]
fn le32(b: &[u8], o: usize) -> u32 {
    nvme_spec::bytes::get(b, o)
}

#[cold]
#[inline(never)]
const fn invalid(offset: u32, what: &'static str) -> ProtocolError {
    ProtocolError::InvalidHeaderField { offset, what }
}

impl Decoder {
    /// A decoder that expects the IC exchange first (ICReq for a controller,
    /// ICResp for a host). Digests are off until [`Decoder::set_session`].
    pub fn new(cfg: DecoderConfig) -> Self {
        Decoder {
            cfg,
            session: Session::default(),
            ic_done: false,
            st: St::Header,
            hdr: [0; MAX_HLEN + DIGEST_LEN],
            have: 0,
            info: None,
            pad_left: 0,
            data_left: 0,
            data_off: 0,
            ddgst: false,
            crc: 0,
            dig: [0; DIGEST_LEN],
            dig_have: 0,
            rules: [Rule::default(); 16],
            pdo_ok: [0; 4],
        }
        .rebuilt()
    }

    fn rebuilt(mut self) -> Self {
        self.rebuild();
        self
    }

    /// Recomputes the fast-path rules after a change of session, limits or phase.
    fn rebuild(&mut self) {
        self.rules = [Rule::default(); 16];
        let align = pda_alignment(self.session.rx_pda.min(MAX_PDA));
        self.pdo_ok = [0; 4];
        for pdo in (0..256).step_by(align) {
            self.pdo_ok[pdo >> 6] |= 1 << (pdo & 63);
        }
        if !self.ic_done {
            return;
        }
        let types: &[PduType] = match self.cfg.role {
            Role::Controller => &[PduType::CapsuleCmd, PduType::H2CData],
            Role::Host => &[PduType::CapsuleResp, PduType::C2HData, PduType::R2T],
        };
        let hd = self.session.header_digest;
        for &ty in types {
            let hlen = ty.hlen() as u8;
            let data = ty.has_pdu_data();
            let variable = flags::DDGSTF | flags::LAST_PDU | flags::SUCCESS;
            self.rules[ty as usize] = Rule {
                fast: true,
                hlen,
                full: hlen + if hd { DIGEST_LEN as u8 } else { 0 },
                data,
                fixed_mask: !(ty.valid_flags() & variable),
                fixed_val: if hd { flags::HDGSTF } else { 0 },
                max_data: match ty {
                    PduType::CapsuleCmd => self.cfg.max_incapsule_data,
                    PduType::H2CData => self.cfg.max_h2c_data,
                    PduType::C2HData => self.cfg.max_c2h_data,
                    _ => 0,
                },
            };
        }
    }

    #[inline(always)]
    fn pdo_aligned(&self, pdo: u8) -> bool {
        (self.pdo_ok[(pdo >> 6) as usize] >> (pdo & 63)) & 1 != 0
    }

    /// A decoder for an already initialized connection (tests, benchmarks).
    pub fn with_session(cfg: DecoderConfig, session: Session) -> Self {
        let mut d = Self::new(cfg);
        d.session = session;
        d.ic_done = true;
        d.rebuild();
        d
    }

    /// Applies the negotiated parameters; call after the IC PDU was decoded
    /// (controller) or received (host), before feeding further bytes.
    pub fn set_session(&mut self, session: Session) {
        self.session = session;
        self.rebuild();
    }

    /// The session parameters in force.
    pub fn session(&self) -> Session {
        self.session
    }

    /// The limits in force.
    pub fn config(&self) -> DecoderConfig {
        self.cfg
    }

    /// Changes the limits (e.g. the in-capsule data size once Connect told
    /// whether this is an admin or I/O queue).
    pub fn set_config(&mut self, cfg: DecoderConfig) {
        self.cfg = cfg;
        self.rebuild();
    }

    /// True once the ICReq/ICResp has been decoded.
    pub fn ic_done(&self) -> bool {
        self.ic_done
    }

    /// True between PDUs (no partial PDU buffered or pending).
    pub fn at_pdu_boundary(&self) -> bool {
        self.st == St::Header && self.have == 0
    }

    /// The error the decoder failed with, if any.
    pub fn error(&self) -> Option<ProtocolError> {
        match self.st {
            St::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Consumes bytes from `input` until one event completes or the input is
    /// exhausted. After an `Err`, the decoder is failed and returns the same
    /// error forever; terminate the connection (send a TermReq with
    /// [`ProtocolError::fes`] unless it is `None`).
    #[inline]
    pub fn next<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, ProtocolError> {
        // Fast path: at a PDU boundary with a whole, well-formed header of a
        // running connection in the input. Anything else (split headers,
        // data, IC/TermReq, any error) takes the general state machine.
        if matches!(self.st, St::Header) && self.have == 0 {
            if let Some(ch) = input.get(..CH_LEN) {
                if let Some(info) = self.check_ch_fast(ch) {
                    if let Some(h) = input.get(..info.full as usize) {
                        if let Some(pdu) = self.parse_fast(h, &info) {
                            self.enter_data(&info);
                            return Ok(Step {
                                consumed: info.full as usize,
                                event: Some(Event::Header {
                                    pdu,
                                    data_len: info.data_len,
                                }),
                            });
                        }
                    }
                }
            }
        }
        self.next_general(input)
    }

    /// Parses the PDU-specific header of the hot PDU types when it is
    /// entirely valid; `None` leaves reporting to [`Decoder::finish_header`].
    #[inline(always)]
    fn parse_fast(&self, h: &[u8], info: &HdrInfo) -> Option<Pdu> {
        let hlen = info.hlen as usize;
        if info.flags & flags::HDGSTF != 0 && crc32c::crc32c(&h[..hlen]) != le32(h, hlen) {
            return None;
        }
        let reserved_ok = |from: usize| !self.cfg.check_reserved || le32(h, from) == 0;
        match info.ty {
            t if t == PduType::CapsuleCmd as u8 => Some(Pdu::CapsuleCmd(CapsuleCmd {
                sqe: Sqe::from_slice(&h[CH_LEN..CAPSULE_CMD_HLEN])?,
            })),
            t if t == PduType::CapsuleResp as u8 => Some(Pdu::CapsuleResp(CapsuleResp {
                cqe: Cqe::from_slice(&h[CH_LEN..CAPSULE_RESP_HLEN])?,
            })),
            t if t == PduType::H2CData as u8 => {
                let datal = le32(h, 16);
                (datal == info.data_len && datal != 0 && reserved_ok(20)).then(|| {
                    Pdu::H2CData(H2CData {
                        cccid: le16(h, 8),
                        ttag: le16(h, 10),
                        datao: le32(h, 12),
                        datal,
                        last: info.flags & flags::LAST_PDU != 0,
                    })
                })
            }
            t if t == PduType::C2HData as u8 => {
                let datal = le32(h, 16);
                let rsvd = !self.cfg.check_reserved || le16(h, 10) == 0;
                (datal == info.data_len && datal != 0 && reserved_ok(20) && rsvd).then(|| {
                    Pdu::C2HData(C2HData {
                        cccid: le16(h, 8),
                        datao: le32(h, 12),
                        datal,
                        last: info.flags & flags::LAST_PDU != 0,
                        success: info.flags & flags::SUCCESS != 0,
                    })
                })
            }
            t if t == PduType::R2T as u8 => {
                let r2tl = le32(h, 16);
                (r2tl != 0 && reserved_ok(20)).then(|| {
                    Pdu::R2T(R2T {
                        cccid: le16(h, 8),
                        ttag: le16(h, 10),
                        r2to: le32(h, 12),
                        r2tl,
                    })
                })
            }
            _ => None,
        }
    }

    /// Sets up the pad/data/digest states for a PDU whose header was accepted.
    #[inline(always)]
    fn enter_data(&mut self, info: &HdrInfo) {
        if info.data_len > 0 {
            self.pad_left = info.pad as usize;
            self.data_left = info.data_len;
            self.data_off = 0;
            self.ddgst = info.ddgst;
            self.crc = 0;
            self.dig_have = 0;
            self.st = if info.pad > 0 { St::Pad } else { St::Data };
        }
    }

    /// The general state machine: split headers, padding, data, digests,
    /// connection management PDUs and all error reporting.
    #[inline(never)]
    fn next_general<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, ProtocolError> {
        let mut used = 0usize;
        loop {
            let rest = input.get(used..).unwrap_or(&[]);
            match self.st {
                St::Failed(e) => return Err(e),
                St::End => {
                    self.st = St::Header;
                    return Ok(Step {
                        consumed: used,
                        event: Some(Event::DataEnd),
                    });
                }
                _ if rest.is_empty() => {
                    return Ok(Step {
                        consumed: used,
                        event: None,
                    })
                }
                St::Header => match self.header(rest) {
                    Ok((n, ev)) => {
                        used += n;
                        if ev.is_some() {
                            return Ok(Step {
                                consumed: used,
                                event: ev,
                            });
                        }
                    }
                    Err(e) => {
                        self.st = St::Failed(e);
                        return Err(e);
                    }
                },
                St::Pad => {
                    let n = self.pad_left.min(rest.len());
                    self.pad_left -= n;
                    used += n;
                    if self.pad_left == 0 {
                        self.st = St::Data;
                    }
                }
                St::Data => {
                    let n = (self.data_left as usize).min(rest.len());
                    let data = &rest[..n];
                    if self.ddgst {
                        self.crc = crc32c::crc32c_append(self.crc, data);
                    }
                    let offset = self.data_off;
                    self.data_off += n as u32;
                    self.data_left -= n as u32;
                    used += n;
                    if self.data_left == 0 {
                        self.st = if self.ddgst { St::Digest } else { St::End };
                    }
                    return Ok(Step {
                        consumed: used,
                        event: Some(Event::Data { offset, data }),
                    });
                }
                St::Digest => {
                    let n = (DIGEST_LEN - self.dig_have).min(rest.len());
                    self.dig[self.dig_have..self.dig_have + n].copy_from_slice(&rest[..n]);
                    self.dig_have += n;
                    used += n;
                    if self.dig_have == DIGEST_LEN {
                        self.st = St::Header;
                        let received = u32::from_le_bytes(self.dig);
                        let ev = if received == self.crc {
                            Event::DataEnd
                        } else {
                            Event::DataDigestError {
                                computed: self.crc,
                                received,
                            }
                        };
                        return Ok(Step {
                            consumed: used,
                            event: Some(ev),
                        });
                    }
                }
            }
        }
    }

    /// Iterates over the events in `input`; stops when the input is exhausted
    /// or after the first error.
    pub fn feed<'d, 'a>(&'d mut self, input: &'a [u8]) -> Feed<'d, 'a> {
        Feed {
            dec: self,
            buf: input,
            done: false,
        }
    }

    /// Header state: returns bytes consumed and the header event when complete.
    #[inline]
    fn header<'a>(&mut self, rest: &[u8]) -> Result<(usize, Option<Event<'a>>), ProtocolError> {
        if self.have == 0 && rest.len() >= CH_LEN {
            // Fast path: the common header (and usually the whole header) is in the input.
            let info = self.check_ch(&rest[..CH_LEN])?;
            let full = info.full as usize;
            if rest.len() >= full {
                let ev = self.finish_header(&rest[..full], &info)?;
                return Ok((full, Some(ev)));
            }
            self.hdr[..rest.len()].copy_from_slice(rest);
            self.have = rest.len();
            self.info = Some(info);
            return Ok((rest.len(), None));
        }
        let mut used = 0;
        if self.have < CH_LEN {
            let n = (CH_LEN - self.have).min(rest.len());
            self.hdr[self.have..self.have + n].copy_from_slice(&rest[..n]);
            self.have += n;
            used += n;
            if self.have < CH_LEN {
                return Ok((used, None));
            }
            let ch = self.hdr;
            self.info = Some(self.check_ch(&ch[..CH_LEN])?);
        }
        let Some(info) = self.info else {
            return Err(ProtocolError::PduSequence {
                what: "decoder header state lost",
            });
        };
        let full = info.full as usize;
        let n = (full - self.have).min(rest.len() - used);
        self.hdr[self.have..self.have + n].copy_from_slice(&rest[used..used + n]);
        self.have += n;
        used += n;
        if self.have < full {
            return Ok((used, None));
        }
        let h = self.hdr;
        self.have = 0;
        self.info = None;
        let ev = self.finish_header(&h[..full], &info)?;
        Ok((used, Some(ev)))
    }

    /// Validates the common header (type, flags, HLEN, PDO, PLEN).
    #[inline(always)]
    fn check_ch(&self, ch: &[u8]) -> Result<HdrInfo, ProtocolError> {
        match self.check_ch_fast(ch) {
            Some(info) => Ok(info),
            None => self.check_ch_slow(ch),
        }
    }

    /// The common case in a few comparisons: a known type of the running
    /// connection with exactly the expected HLEN, digest flags, PDO and PLEN.
    /// `None` sends the header through [`Decoder::check_ch_slow`], which
    /// accepts everything this accepts and names the first bad field
    /// otherwise.
    #[inline(always)]
    fn check_ch_fast(&self, ch: &[u8]) -> Option<HdrInfo> {
        let (t, fl, hlen, pdo) = (ch[0], ch[1], ch[2], ch[3]);
        let plen = le32(ch, 4);
        let r = self.rules[(t & 15) as usize];
        if t >= 16 || !r.fast || hlen != r.hlen || fl & r.fixed_mask != r.fixed_val {
            return None;
        }
        let full = r.full as u32;
        let mut info = HdrInfo {
            ty: t,
            flags: fl,
            hlen,
            full: r.full,
            pad: 0,
            data_len: 0,
            ddgst: false,
        };
        if plen == full && pdo == 0 && fl & flags::DDGSTF == 0 {
            return Some(info);
        }
        let ddgstf = fl & flags::DDGSTF != 0;
        if !r.data
            || ddgstf != self.session.data_digest
            || (pdo as u32) < full
            || !self.pdo_aligned(pdo)
            || fl & (flags::SUCCESS | flags::LAST_PDU) == flags::SUCCESS
        {
            return None;
        }
        let dd = if ddgstf { DIGEST_LEN as u32 } else { 0 };
        let rest = plen.checked_sub(pdo as u32)?;
        if rest <= dd || rest - dd > r.max_data {
            return None;
        }
        info.pad = pdo - r.full;
        info.data_len = rest - dd;
        info.ddgst = ddgstf;
        Some(info)
    }

    /// Validates the common header field by field, lowest offset first.
    #[cold]
    #[inline(never)]
    fn check_ch_slow(&self, ch: &[u8]) -> Result<HdrInfo, ProtocolError> {
        let (t, flags, hlen, pdo) = (ch[0], ch[1], ch[2], ch[3]);
        let plen = le32(ch, 4);
        let Some(ty) = PduType::from_u8(t) else {
            return Err(invalid(0, "unknown PDU type"));
        };
        let inbound = match self.cfg.role {
            Role::Controller => ty.is_host_to_controller(),
            Role::Host => !ty.is_host_to_controller(),
        };
        if !inbound {
            return Err(invalid(0, "PDU type not valid in this direction"));
        }
        match ty {
            PduType::IcReq | PduType::IcResp if self.ic_done => {
                return Err(ProtocolError::PduSequence {
                    what: "second connection initialization PDU",
                });
            }
            PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq => {}
            _ if !self.ic_done => {
                return Err(ProtocolError::PduSequence {
                    what: "PDU before connection initialization",
                });
            }
            _ => {}
        }
        if flags & !ty.valid_flags() != 0 {
            return Err(invalid(1, "flag not valid for this PDU type"));
        }
        let hdgstf = flags & flags::HDGSTF != 0;
        let ddgstf = flags & flags::DDGSTF != 0;
        if ty.has_header_digest() && hdgstf != self.session.header_digest {
            return Err(invalid(
                1,
                "HDGSTF does not match the negotiated header digest",
            ));
        }
        if ddgstf && !self.session.data_digest {
            return Err(invalid(1, "DDGSTF set but data digest not negotiated"));
        }
        if ty == PduType::C2HData && flags & (flags::SUCCESS | flags::LAST_PDU) == flags::SUCCESS {
            return Err(invalid(1, "SUCCESS without LAST_PDU"));
        }
        if hlen as usize != ty.hlen() {
            return Err(invalid(2, "HLEN does not match the PDU type"));
        }
        let full = hlen as u32 + if hdgstf { DIGEST_LEN as u32 } else { 0 };
        let mut info = HdrInfo {
            ty: t,
            flags,
            hlen,
            full: full as u8,
            pad: 0,
            data_len: 0,
            ddgst: false,
        };
        match ty {
            PduType::IcReq | PduType::IcResp => {
                if pdo != 0 {
                    return Err(invalid(3, "PDO must be 0"));
                }
                if plen != IC_LEN as u32 {
                    return Err(invalid(4, "PLEN must be 128"));
                }
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                if plen < TERM_HLEN as u32 || plen > (TERM_HLEN + TERM_MAX_DATA) as u32 {
                    return Err(ProtocolError::MalformedTermReq { plen });
                }
                // PDO is reserved; some senders point it at the error data
                if pdo != 0 && pdo as usize != TERM_HLEN {
                    return Err(invalid(3, "PDO must be 0"));
                }
                info.data_len = plen - TERM_HLEN as u32;
            }
            PduType::CapsuleResp | PduType::R2T => {
                if pdo != 0 {
                    return Err(invalid(3, "PDO must be 0"));
                }
                if plen != full {
                    return Err(invalid(4, "PLEN does not match the header length"));
                }
            }
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData => {
                if plen < full {
                    return Err(invalid(4, "PLEN smaller than the header"));
                }
                if plen == full {
                    // no data: PDO 0 (or pointing at the end of the header)
                    if pdo != 0 && pdo as u32 != full {
                        return Err(invalid(3, "PDO invalid for a PDU without data"));
                    }
                } else {
                    let align = pda_alignment(self.session.rx_pda) as u32;
                    let pdo32 = pdo as u32;
                    if pdo32 < full || pdo32 > plen || pdo32 % align != 0 {
                        return Err(invalid(3, "PDO not aligned or outside the PDU"));
                    }
                    let dd = if ddgstf { DIGEST_LEN as u32 } else { 0 };
                    let rest = plen - pdo32;
                    if rest <= dd {
                        return Err(invalid(4, "PLEN leaves no room for data"));
                    }
                    if self.session.data_digest && !ddgstf {
                        return Err(invalid(1, "DDGSTF clear but data digest negotiated"));
                    }
                    info.pad = (pdo32 - full) as u8;
                    info.data_len = rest - dd;
                    info.ddgst = ddgstf;
                    let max = match ty {
                        PduType::CapsuleCmd => self.cfg.max_incapsule_data,
                        PduType::H2CData => self.cfg.max_h2c_data,
                        _ => self.cfg.max_c2h_data,
                    };
                    if info.data_len > max {
                        return Err(ProtocolError::DataLimitExceeded {
                            len: info.data_len,
                            max,
                        });
                    }
                }
            }
        }
        Ok(info)
    }

    fn check_zero(&self, h: &[u8], from: usize, to: usize) -> Result<(), ProtocolError> {
        if !self.cfg.check_reserved {
            return Ok(());
        }
        match h[from..to].iter().position(|&b| b != 0) {
            Some(i) => Err(invalid((from + i) as u32, "reserved field not zero")),
            None => Ok(()),
        }
    }

    /// Verifies the header digest, parses and validates the PDU-specific
    /// header, and sets up the data states.
    #[inline]
    fn finish_header<'a>(&mut self, h: &[u8], info: &HdrInfo) -> Result<Event<'a>, ProtocolError> {
        let hlen = info.hlen as usize;
        if info.flags & flags::HDGSTF != 0 {
            let computed = crc32c::crc32c(&h[..hlen]);
            let received = le32(h, hlen);
            if computed != received {
                return Err(ProtocolError::HeaderDigest { computed, received });
            }
        }
        let Some(ty) = PduType::from_u8(info.ty) else {
            return Err(invalid(0, "unknown PDU type"));
        };
        let pdu = match ty {
            PduType::CapsuleCmd => {
                let mut sqe = Sqe::zeroed();
                sqe.0.copy_from_slice(&h[CH_LEN..CAPSULE_CMD_HLEN]);
                Pdu::CapsuleCmd(CapsuleCmd { sqe })
            }
            PduType::CapsuleResp => {
                let mut cqe = Cqe::zeroed();
                cqe.0.copy_from_slice(&h[CH_LEN..CAPSULE_RESP_HLEN]);
                Pdu::CapsuleResp(CapsuleResp { cqe })
            }
            PduType::H2CData | PduType::C2HData => {
                let datal = le32(h, 16);
                if datal == 0 || datal != info.data_len {
                    return Err(invalid(16, "DATAL does not match the PDU data length"));
                }
                self.check_zero(h, 20, 24)?;
                let last = info.flags & flags::LAST_PDU != 0;
                if ty == PduType::H2CData {
                    Pdu::H2CData(H2CData {
                        cccid: le16(h, 8),
                        ttag: le16(h, 10),
                        datao: le32(h, 12),
                        datal,
                        last,
                    })
                } else {
                    self.check_zero(h, 10, 12)?;
                    Pdu::C2HData(C2HData {
                        cccid: le16(h, 8),
                        datao: le32(h, 12),
                        datal,
                        last,
                        success: info.flags & flags::SUCCESS != 0,
                    })
                }
            }
            PduType::R2T => {
                let r2tl = le32(h, 16);
                if r2tl == 0 {
                    return Err(invalid(16, "R2TL is zero"));
                }
                self.check_zero(h, 20, 24)?;
                Pdu::R2T(R2T {
                    cccid: le16(h, 8),
                    ttag: le16(h, 10),
                    r2to: le32(h, 12),
                    r2tl,
                })
            }
            PduType::IcReq | PduType::IcResp => {
                let pfv = le16(h, 8);
                if pfv != PFV_1_0 {
                    return Err(ProtocolError::UnsupportedParameter {
                        offset: 8,
                        what: "PDU format version",
                    });
                }
                let pda = h[10];
                if pda > MAX_PDA {
                    return Err(invalid(10, "PDA above 31"));
                }
                let dg = h[11];
                if dg & !(dgst::HDGST_ENABLE | dgst::DDGST_ENABLE) != 0 {
                    return Err(invalid(11, "reserved DGST bits set"));
                }
                let v = le32(h, 12);
                self.check_zero(h, 16, IC_LEN)?;
                let (hd, dd) = (dg & dgst::HDGST_ENABLE != 0, dg & dgst::DDGST_ENABLE != 0);
                self.ic_done = true;
                if ty == PduType::IcReq {
                    Pdu::IcReq(IcReq {
                        pfv,
                        hpda: pda,
                        hdgst: hd,
                        ddgst: dd,
                        maxr2t: v,
                    })
                } else {
                    if v < MIN_MAXH2CDATA || v % 4 != 0 {
                        return Err(invalid(12, "MAXH2CDATA below 4096 or not a multiple of 4"));
                    }
                    Pdu::IcResp(IcResp {
                        pfv,
                        cpda: pda,
                        hdgst: hd,
                        ddgst: dd,
                        maxh2cdata: v,
                    })
                }
            }
            PduType::H2CTermReq | PduType::C2HTermReq => {
                // reserved bytes are not checked: the peer is closing anyway and
                // its FES/FEI are worth reporting
                let t = TermReq {
                    fes: le16(h, 8),
                    fei: le32(h, 10),
                };
                if ty == PduType::H2CTermReq {
                    Pdu::H2CTermReq(t)
                } else {
                    Pdu::C2HTermReq(t)
                }
            }
        };
        if matches!(pdu, Pdu::IcReq(_) | Pdu::IcResp(_)) {
            self.rebuild();
        }
        if info.data_len > 0 {
            self.pad_left = info.pad as usize;
            self.data_left = info.data_len;
            self.data_off = 0;
            self.ddgst = info.ddgst;
            self.crc = 0;
            self.dig_have = 0;
            self.st = if info.pad > 0 { St::Pad } else { St::Data };
        }
        Ok(Event::Header {
            pdu,
            data_len: info.data_len,
        })
    }
}

/// Iterator over the events of one input buffer (see [`Decoder::feed`]).
#[derive(Debug)]
pub struct Feed<'d, 'a> {
    dec: &'d mut Decoder,
    buf: &'a [u8],
    done: bool,
}

impl<'a> Feed<'_, 'a> {
    /// The input not consumed yet (empty once the iterator returned `None`).
    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }
}

impl<'a> Iterator for Feed<'_, 'a> {
    type Item = Result<Event<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.dec.next(self.buf) {
            Ok(step) => {
                self.buf = self.buf.get(step.consumed..).unwrap_or(&[]);
                match step.event {
                    Some(e) => Some(Ok(e)),
                    None => {
                        self.done = true;
                        None
                    }
                }
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever the fast path accepts, the exhaustive check accepts with
        /// the same result.
        #[test]
        fn fast_path_is_subset_of_slow_path(
            ty in prop_oneof![0u8..10, any::<u8>()],
            fl in any::<u8>(),
            hlen in prop_oneof![Just(24u8), Just(72u8), Just(128u8), any::<u8>()],
            pdo in prop_oneof![Just(0u8), Just(24u8), Just(28u8), Just(72u8), Just(76u8), Just(80u8), any::<u8>()],
            plen in prop_oneof![0u32..300, any::<u32>()],
            host in any::<bool>(),
            hd in any::<bool>(),
            dd in any::<bool>(),
            pda in prop_oneof![Just(0u8), 0u8..=31],
            ic in any::<bool>(),
        ) {
            let cfg = if host { DecoderConfig::host() } else { DecoderConfig::controller() };
            let s = Session { header_digest: hd, data_digest: dd, rx_pda: pda, tx_pda: 0 };
            let d = if ic { Decoder::with_session(cfg, s) } else { Decoder::new(cfg) };
            let p = plen.to_le_bytes();
            let ch = [ty, fl, hlen, pdo, p[0], p[1], p[2], p[3]];
            if let Some(fast) = d.check_ch_fast(&ch) {
                prop_assert_eq!(d.check_ch_slow(&ch), Ok(fast));
            }
        }
    }

    #[test]
    fn fast_path_taken_for_common_pdus() {
        let s = Session {
            header_digest: true,
            data_digest: true,
            rx_pda: 0,
            tx_pda: 0,
        };
        let d = Decoder::with_session(DecoderConfig::controller(), s);
        // CapsuleCmd without data, with header digest
        let ch = [4, flags::HDGSTF, 72, 0, 76, 0, 0, 0];
        assert!(d.check_ch_fast(&ch).is_some());
        // CapsuleCmd with 4 KiB data and both digests
        let plen = (76u32 + 4096 + 4).to_le_bytes();
        let ch = [
            4,
            flags::HDGSTF | flags::DDGSTF,
            72,
            76,
            plen[0],
            plen[1],
            plen[2],
            plen[3],
        ];
        let info = d.check_ch_fast(&ch).unwrap();
        assert_eq!((info.data_len, info.pad, info.ddgst), (4096, 0, true));
        // not before IC
        let d = Decoder::new(DecoderConfig::controller());
        assert!(d.check_ch_fast(&[4, 0, 72, 0, 72, 0, 0, 0]).is_none());
    }
}
