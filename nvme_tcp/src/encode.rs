//! NVMe/TCP PDU encoder: writes PDU headers (common header, PDU-specific
//! header, header digest, padding up to PDO) into caller-provided memory, so
//! a batch of headers and data buffers can go out in one `writev`
//! (TP 8000 sections 3.6.1-3.6.3). Data is never copied by the header
//! encoders; the data digest is computed over the caller's iovecs with
//! [`data_digest`] / [`DataDigest`].

use thiserror::Error;

use nvme_spec::{Cqe, Sqe};

use crate::pdu::*;

/// Errors of the encoder (all are caller errors: nothing here depends on
/// received bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The output buffer is too small.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// `data_len` differs from the DATAL of an H2CData/C2HData header.
    #[error("data length {data_len} does not match DATAL {datal}")]
    DataLenMismatch {
        /// DATAL in the header.
        datal: u32,
        /// Data length passed to the encoder.
        data_len: u32,
    },
    /// The PDU would be longer than PLEN can express, or data was given for
    /// a PDU type that carries none.
    #[error("invalid data length {data_len} for {pdu_type:?}")]
    InvalidDataLen {
        /// The PDU type.
        pdu_type: PduType,
        /// Data length passed to the encoder.
        data_len: u64,
    },
    /// A header field is out of range (PDA above 31, MAXH2CDATA below 4096...).
    #[error("invalid {field}")]
    InvalidField {
        /// The field.
        field: &'static str,
    },
}

/// Incremental CRC32C data digest (TP 8000 section 3.6.2.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataDigest(u32);

impl DataDigest {
    /// A digest over no bytes yet.
    pub const fn new() -> Self {
        DataDigest(0)
    }
    /// Adds bytes.
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, data);
    }
    /// The digest value.
    #[inline]
    pub const fn value(&self) -> u32 {
        self.0
    }
    /// The digest as it goes on the wire (little-endian).
    #[inline]
    pub const fn to_bytes(&self) -> [u8; DIGEST_LEN] {
        self.0.to_le_bytes()
    }
}

/// CRC32C data digest over a list of buffers (iovecs, `IoSlice`s, `Vec`s...).
#[inline]
pub fn data_digest<B: core::ops::Deref<Target = [u8]>>(iov: &[B]) -> u32 {
    let mut d = DataDigest::new();
    for b in iov {
        d.update(b);
    }
    d.value()
}

/// Writes PDUs of one connection's send direction with its negotiated
/// digests and alignment. The per-type writers ([`Encoder::capsule_cmd`],
/// [`Encoder::capsule_resp`], [`Encoder::c2h_data`], [`Encoder::h2c_data`],
/// [`Encoder::r2t`]) are straight-line code: one bounds check, a few stores,
/// a CRC32C when header digests are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoder {
    session: Session,
    /// PDO of a CapsuleCmd with in-capsule data.
    cmd_pdo: u8,
    /// PDO of an H2CData / C2HData PDU.
    data_pdo: u8,
}

impl Default for Encoder {
    /// No digests, 4-byte alignment (the state before the IC exchange).
    fn default() -> Self {
        Encoder::new(Session::default())
    }
}

#[inline(always)]
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline(always)]
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes the common header.
#[inline(always)]
fn put_ch(h: &mut [u8], ty: PduType, flags: u8, hlen: usize, pdo: u8, plen: u32) {
    let p = plen.to_le_bytes();
    h[..CH_LEN].copy_from_slice(&[ty as u8, flags, hlen as u8, pdo, p[0], p[1], p[2], p[3]]);
}

#[cold]
#[inline(never)]
fn too_small(need: usize, have: usize) -> EncodeError {
    EncodeError::BufferTooSmall { need, have }
}

#[cold]
#[inline(never)]
fn bad_len(pdu_type: PduType, data_len: u64) -> EncodeError {
    EncodeError::InvalidDataLen { pdu_type, data_len }
}

/// Header digest at `hlen` when enabled; returns the header length with digest.
#[inline(always)]
fn finish_hdgst(h: &mut [u8], hlen: usize, hd: bool) -> usize {
    if hd {
        let d = crc32c::crc32c(&h[..hlen]);
        put32(h, hlen, d);
        hlen + DIGEST_LEN
    } else {
        hlen
    }
}

/// Lengths of a PDU about to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduLayout {
    /// HLEN.
    pub hlen: usize,
    /// Bytes written by the header encoder: HLEN + header digest + padding
    /// (= PDO when the PDU has data).
    pub header_len: usize,
    /// PDO field value.
    pub pdo: u8,
    /// PLEN field value (header, padding, data and data digest).
    pub plen: u32,
    /// Digest flags (the type-specific flags are added by the encoder).
    pub flags: u8,
    /// True if a 4-byte data digest must follow the data.
    pub data_digest: bool,
}

const fn padded(hlen: usize, hd: bool, pda: u8) -> u8 {
    let full = hlen + if hd { DIGEST_LEN } else { 0 };
    let pda = if pda > MAX_PDA { MAX_PDA } else { pda };
    let align = pda_alignment(pda);
    (full.div_ceil(align) * align) as u8
}

impl Encoder {
    /// An encoder for a connection with the given session parameters (digest
    /// flags, and `tx_pda` for the PDO of data PDUs it sends).
    pub const fn new(session: Session) -> Self {
        Encoder {
            session,
            cmd_pdo: padded(CAPSULE_CMD_HLEN, session.header_digest, session.tx_pda),
            data_pdo: padded(DATA_HLEN, session.header_digest, session.tx_pda),
        }
    }

    /// The session parameters in force.
    pub const fn session(&self) -> Session {
        self.session
    }

    /// Changes the session parameters (after the IC exchange).
    pub fn set_session(&mut self, session: Session) {
        *self = Encoder::new(session);
    }

    /// Computes the layout of a PDU of type `ty` with `data_len` data bytes.
    #[inline]
    pub fn layout(&self, ty: PduType, data_len: u32) -> Result<PduLayout, EncodeError> {
        let hlen = ty.hlen();
        let hd = self.session.header_digest && ty.has_header_digest();
        let full = hlen + if hd { DIGEST_LEN } else { 0 };
        let hflag = if hd { flags::HDGSTF } else { 0 };
        let simple = |plen: u32| PduLayout {
            hlen,
            header_len: full,
            pdo: 0,
            plen,
            flags: hflag,
            data_digest: false,
        };
        match ty {
            PduType::H2CTermReq | PduType::C2HTermReq if data_len as usize <= TERM_MAX_DATA => {
                Ok(simple(hlen as u32 + data_len))
            }
            _ if data_len == 0 => Ok(simple(full as u32)),
            PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData => {
                let pdo = if ty == PduType::CapsuleCmd {
                    self.cmd_pdo
                } else {
                    self.data_pdo
                };
                let dd = self.session.data_digest;
                let plen = pdo as u64 + data_len as u64 + if dd { DIGEST_LEN as u64 } else { 0 };
                let plen = u32::try_from(plen).map_err(|_| bad_len(ty, data_len as u64))?;
                Ok(PduLayout {
                    hlen,
                    header_len: pdo as usize,
                    pdo,
                    plen,
                    flags: hflag | if dd { flags::DDGSTF } else { 0 },
                    data_digest: dd,
                })
            }
            _ => Err(bad_len(ty, data_len as u64)),
        }
    }

    /// Writes the header of `pdu` (with `data_len` bytes of data to follow)
    /// into `out`: common header, PDU-specific header, header digest and
    /// padding. Returns the bytes written ([`PduLayout::header_len`]). The
    /// caller sends the data and, if [`PduLayout::data_digest`], the 4-byte
    /// digest after it.
    #[inline]
    pub fn encode_header(
        &self,
        pdu: &Pdu,
        data_len: u32,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        match pdu {
            Pdu::CapsuleCmd(c) => self.capsule_cmd(&c.sqe, data_len, out),
            Pdu::CapsuleResp(c) if data_len == 0 => self.capsule_resp(&c.cqe, out),
            Pdu::H2CData(d) => {
                check_datal(d.datal, data_len)?;
                self.h2c_data(d, out)
            }
            Pdu::C2HData(d) => {
                check_datal(d.datal, data_len)?;
                self.c2h_data(d, out)
            }
            Pdu::R2T(r) if data_len == 0 => self.r2t(r, out),
            Pdu::IcReq(r) if data_len == 0 => Encoder::ic_req(r, out),
            Pdu::IcResp(r) if data_len == 0 => Encoder::ic_resp(r, out),
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
                let l = self.layout(pdu.pdu_type(), data_len)?;
                let have = out.len();
                let h = out
                    .get_mut(..TERM_HLEN)
                    .ok_or_else(|| too_small(TERM_HLEN, have))?;
                h.fill(0);
                put_ch(h, pdu.pdu_type(), 0, TERM_HLEN, 0, l.plen);
                put16(h, 8, t.fes);
                put32(h, 10, t.fei);
                Ok(TERM_HLEN)
            }
            _ => Err(bad_len(pdu.pdu_type(), data_len as u64)),
        }
    }

    /// Appends the header of `pdu` to `out` (see [`Encoder::encode_header`]).
    /// Does not reallocate when `out` has [`MAX_ENCODED_HEADER_LEN`] spare capacity.
    #[inline]
    pub fn push_header(
        &self,
        pdu: &Pdu,
        data_len: u32,
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let start = out.len();
        let l = self.layout(pdu.pdu_type(), data_len)?;
        out.resize(start + l.header_len, 0);
        match self.encode_header(pdu, data_len, &mut out[start..]) {
            Ok(n) => Ok(n),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Appends a complete PDU: header, the data buffers, and the data digest
    /// when enabled. Returns the PDU length (PLEN).
    pub fn push_pdu<B: core::ops::Deref<Target = [u8]>>(
        &self,
        pdu: &Pdu,
        data: &[B],
        out: &mut Vec<u8>,
    ) -> Result<usize, EncodeError> {
        let total: u64 = data.iter().map(|b| b.len() as u64).sum();
        let data_len = u32::try_from(total).map_err(|_| bad_len(pdu.pdu_type(), total))?;
        let start = out.len();
        let l = self.layout(pdu.pdu_type(), data_len)?;
        self.push_header(pdu, data_len, out)?;
        for b in data {
            out.extend_from_slice(b);
        }
        if l.data_digest {
            out.extend_from_slice(&data_digest(data).to_le_bytes());
        }
        Ok(out.len() - start)
    }

    /// CapsuleCmd header for `sqe` with `icd_len` bytes of in-capsule data to
    /// follow (header digest and padding included). Returns bytes written.
    #[inline]
    pub fn capsule_cmd(
        &self,
        sqe: &Sqe,
        icd_len: u32,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let hd = self.session.header_digest;
        let mut fl = if hd { flags::HDGSTF } else { 0 };
        let (n, pdo, plen) = if icd_len == 0 {
            let n = CAPSULE_CMD_HLEN + if hd { DIGEST_LEN } else { 0 };
            (n, 0u8, n as u32)
        } else {
            let dd = self.session.data_digest;
            if dd {
                fl |= flags::DDGSTF;
            }
            let pdo = self.cmd_pdo;
            let plen = (pdo as u32)
                .checked_add(icd_len)
                .and_then(|p| p.checked_add(if dd { DIGEST_LEN as u32 } else { 0 }))
                .ok_or_else(|| bad_len(PduType::CapsuleCmd, icd_len as u64))?;
            (pdo as usize, pdo, plen)
        };
        let have = out.len();
        let h = out.get_mut(..n).ok_or_else(|| too_small(n, have))?;
        put_ch(h, PduType::CapsuleCmd, fl, CAPSULE_CMD_HLEN, pdo, plen);
        h[CH_LEN..CAPSULE_CMD_HLEN].copy_from_slice(sqe.as_bytes());
        let end = finish_hdgst(h, CAPSULE_CMD_HLEN, hd);
        if end < n {
            h[end..].fill(0);
        }
        Ok(n)
    }

    /// Complete CapsuleResp PDU for `cqe`. Returns bytes written.
    #[inline]
    pub fn capsule_resp(&self, cqe: &Cqe, out: &mut [u8]) -> Result<usize, EncodeError> {
        let hd = self.session.header_digest;
        let n = CAPSULE_RESP_HLEN + if hd { DIGEST_LEN } else { 0 };
        let have = out.len();
        let h = out.get_mut(..n).ok_or_else(|| too_small(n, have))?;
        put_ch(
            h,
            PduType::CapsuleResp,
            if hd { flags::HDGSTF } else { 0 },
            CAPSULE_RESP_HLEN,
            0,
            n as u32,
        );
        h[CH_LEN..CAPSULE_RESP_HLEN].copy_from_slice(cqe.as_bytes());
        finish_hdgst(h, CAPSULE_RESP_HLEN, hd);
        Ok(n)
    }

    /// Header of a data PDU (H2CData or C2HData): CH, CCCID, TTAG/reserved,
    /// DATAO, DATAL, digest, padding.
    #[inline(always)]
    /// (`d.last` is ignored: the caller passes the type-specific flags.)
    fn data_hdr(
        &self,
        ty: PduType,
        extra_flags: u8,
        d: &H2CData,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let H2CData {
            cccid,
            ttag,
            datao,
            datal,
            ..
        } = *d;
        if datal == 0 {
            return Err(EncodeError::DataLenMismatch { datal, data_len: 0 });
        }
        let hd = self.session.header_digest;
        let dd = self.session.data_digest;
        let fl =
            extra_flags | if hd { flags::HDGSTF } else { 0 } | if dd { flags::DDGSTF } else { 0 };
        let pdo = self.data_pdo;
        let plen = (pdo as u32)
            .checked_add(datal)
            .and_then(|p| p.checked_add(if dd { DIGEST_LEN as u32 } else { 0 }))
            .ok_or_else(|| bad_len(ty, datal as u64))?;
        let n = pdo as usize;
        let have = out.len();
        let h = out.get_mut(..n).ok_or_else(|| too_small(n, have))?;
        put_ch(h, ty, fl, DATA_HLEN, pdo, plen);
        put16(h, 8, cccid);
        put16(h, 10, ttag);
        put32(h, 12, datao);
        put32(h, 16, datal);
        put32(h, 20, 0);
        let end = finish_hdgst(h, DATA_HLEN, hd);
        if end < n {
            h[end..].fill(0);
        }
        Ok(n)
    }

    /// H2CData header; `hdr.datal` bytes of data follow. Returns bytes written (PDO).
    #[inline]
    pub fn h2c_data(&self, hdr: &H2CData, out: &mut [u8]) -> Result<usize, EncodeError> {
        let fl = if hdr.last { flags::LAST_PDU } else { 0 };
        self.data_hdr(PduType::H2CData, fl, hdr, out)
    }

    /// C2HData header; `hdr.datal` bytes of data follow. Returns bytes written (PDO).
    #[inline]
    pub fn c2h_data(&self, hdr: &C2HData, out: &mut [u8]) -> Result<usize, EncodeError> {
        if hdr.success && !hdr.last {
            return Err(EncodeError::InvalidField {
                field: "SUCCESS without LAST_PDU",
            });
        }
        let fl = if hdr.last { flags::LAST_PDU } else { 0 }
            | if hdr.success { flags::SUCCESS } else { 0 };
        let d = H2CData {
            cccid: hdr.cccid,
            ttag: 0,
            datao: hdr.datao,
            datal: hdr.datal,
            last: hdr.last,
        };
        self.data_hdr(PduType::C2HData, fl, &d, out)
    }

    /// Complete R2T PDU. Returns bytes written.
    #[inline]
    pub fn r2t(&self, r2t: &R2T, out: &mut [u8]) -> Result<usize, EncodeError> {
        if r2t.r2tl == 0 {
            return Err(EncodeError::InvalidField {
                field: "R2TL of zero",
            });
        }
        let hd = self.session.header_digest;
        let n = R2T_HLEN + if hd { DIGEST_LEN } else { 0 };
        let have = out.len();
        let h = out.get_mut(..n).ok_or_else(|| too_small(n, have))?;
        put_ch(
            h,
            PduType::R2T,
            if hd { flags::HDGSTF } else { 0 },
            R2T_HLEN,
            0,
            n as u32,
        );
        put16(h, 8, r2t.cccid);
        put16(h, 10, r2t.ttag);
        put32(h, 12, r2t.r2to);
        put32(h, 16, r2t.r2tl);
        put32(h, 20, 0);
        finish_hdgst(h, R2T_HLEN, hd);
        Ok(n)
    }

    fn ic(
        ty: PduType,
        pfv: u16,
        pda: u8,
        hd: bool,
        dd: bool,
        v: u32,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let have = out.len();
        let h = out
            .get_mut(..IC_LEN)
            .ok_or_else(|| too_small(IC_LEN, have))?;
        h.fill(0);
        put_ch(h, ty, 0, IC_LEN, 0, IC_LEN as u32);
        put16(h, 8, pfv);
        h[10] = pda;
        h[11] = dgst_byte(hd, dd);
        put32(h, 12, v);
        Ok(IC_LEN)
    }

    /// Complete ICReq PDU (never has digests).
    pub fn ic_req(req: &IcReq, out: &mut [u8]) -> Result<usize, EncodeError> {
        if req.hpda > MAX_PDA {
            return Err(EncodeError::InvalidField { field: "HPDA" });
        }
        Self::ic(
            PduType::IcReq,
            req.pfv,
            req.hpda,
            req.hdgst,
            req.ddgst,
            req.maxr2t,
            out,
        )
    }

    /// Complete ICResp PDU (never has digests).
    pub fn ic_resp(resp: &IcResp, out: &mut [u8]) -> Result<usize, EncodeError> {
        if resp.cpda > MAX_PDA {
            return Err(EncodeError::InvalidField { field: "CPDA" });
        }
        if resp.maxh2cdata < MIN_MAXH2CDATA || resp.maxh2cdata % 4 != 0 {
            return Err(EncodeError::InvalidField {
                field: "MAXH2CDATA",
            });
        }
        Self::ic(
            PduType::IcResp,
            resp.pfv,
            resp.cpda,
            resp.hdgst,
            resp.ddgst,
            resp.maxh2cdata,
            out,
        )
    }

    /// Complete TermReq PDU sent by `sender` (a host sends H2CTermReq, a
    /// controller C2HTermReq) with up to 128 bytes of the offending PDU header
    /// (longer error data is truncated). Returns the PDU length.
    pub fn term_req(
        sender: Role,
        fes: Fes,
        fei: u32,
        error_data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let data = &error_data[..error_data.len().min(TERM_MAX_DATA)];
        let t = TermReq {
            fes: fes as u16,
            fei,
        };
        let pdu = match sender {
            Role::Host => Pdu::H2CTermReq(t),
            Role::Controller => Pdu::C2HTermReq(t),
        };
        let total = TERM_HLEN + data.len();
        if out.len() < total {
            return Err(too_small(total, out.len()));
        }
        let n = Encoder::default().encode_header(&pdu, data.len() as u32, out)?;
        out[n..n + data.len()].copy_from_slice(data);
        Ok(total)
    }
}

#[inline]
fn check_datal(datal: u32, data_len: u32) -> Result<(), EncodeError> {
    if datal != data_len || datal == 0 {
        return Err(EncodeError::DataLenMismatch { datal, data_len });
    }
    Ok(())
}

#[inline]
fn dgst_byte(h: bool, d: bool) -> u8 {
    (if h { dgst::HDGST_ENABLE } else { 0 }) | (if d { dgst::DDGST_ENABLE } else { 0 })
}
