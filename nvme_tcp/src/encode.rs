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
/// digests and alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoder {
    session: Session,
}

#[inline(always)]
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline(always)]
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
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
    /// Flags (digest flags; the type-specific flags are added by the encoder).
    pub flags: u8,
    /// True if a 4-byte data digest must follow the data.
    pub data_digest: bool,
}

impl Encoder {
    /// An encoder for a connection with the given session parameters (digest
    /// flags, and `tx_pda` for the PDO of data PDUs it sends).
    pub const fn new(session: Session) -> Self {
        Encoder { session }
    }

    /// The session parameters in force.
    pub const fn session(&self) -> Session {
        self.session
    }

    /// Changes the session parameters (after the IC exchange).
    pub fn set_session(&mut self, session: Session) {
        self.session = session;
    }

    /// Computes the layout of a PDU of type `ty` with `data_len` data bytes.
    #[inline]
    pub fn layout(&self, ty: PduType, data_len: u32) -> Result<PduLayout, EncodeError> {
        let hlen = ty.hlen();
        let bad = || EncodeError::InvalidDataLen {
            pdu_type: ty,
            data_len: data_len as u64,
        };
        match ty {
            PduType::IcReq | PduType::IcResp | PduType::CapsuleResp | PduType::R2T
                if data_len != 0 =>
            {
                Err(bad())
            }
            PduType::IcReq | PduType::IcResp => Ok(PduLayout {
                hlen,
                header_len: hlen,
                pdo: 0,
                plen: hlen as u32,
                flags: 0,
                data_digest: false,
            }),
            PduType::H2CTermReq | PduType::C2HTermReq => {
                if data_len as usize > TERM_MAX_DATA {
                    return Err(bad());
                }
                Ok(PduLayout {
                    hlen,
                    header_len: hlen,
                    pdo: 0,
                    plen: (hlen as u32) + data_len,
                    flags: 0,
                    data_digest: false,
                })
            }
            _ => {
                let hd = self.session.header_digest;
                let full = hlen + if hd { DIGEST_LEN } else { 0 };
                let mut flags = if hd { flags::HDGSTF } else { 0 };
                if data_len == 0 || !ty.has_pdu_data() {
                    if data_len != 0 {
                        return Err(bad());
                    }
                    return Ok(PduLayout {
                        hlen,
                        header_len: full,
                        pdo: 0,
                        plen: full as u32,
                        flags,
                        data_digest: false,
                    });
                }
                let align = pda_alignment(self.session.tx_pda.min(MAX_PDA));
                let pdo = full.div_ceil(align) * align;
                let dd = self.session.data_digest;
                if dd {
                    flags |= flags::DDGSTF;
                }
                let plen = (pdo as u64) + data_len as u64 + if dd { DIGEST_LEN as u64 } else { 0 };
                let plen = u32::try_from(plen).map_err(|_| bad())?;
                Ok(PduLayout {
                    hlen,
                    header_len: pdo,
                    pdo: pdo as u8,
                    plen,
                    flags,
                    data_digest: dd,
                })
            }
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
        let ty = pdu.pdu_type();
        let l = self.layout(ty, data_len)?;
        if out.len() < l.header_len {
            return Err(EncodeError::BufferTooSmall {
                need: l.header_len,
                have: out.len(),
            });
        }
        let h = &mut out[..l.header_len];
        let mut fl = l.flags;
        match pdu {
            Pdu::IcReq(r) => {
                if r.hpda > MAX_PDA {
                    return Err(EncodeError::InvalidField { field: "HPDA" });
                }
                h.fill(0);
                put16(h, 8, r.pfv);
                h[10] = r.hpda;
                h[11] = dgst_byte(r.hdgst, r.ddgst);
                put32(h, 12, r.maxr2t);
            }
            Pdu::IcResp(r) => {
                if r.cpda > MAX_PDA {
                    return Err(EncodeError::InvalidField { field: "CPDA" });
                }
                if r.maxh2cdata < MIN_MAXH2CDATA || r.maxh2cdata % 4 != 0 {
                    return Err(EncodeError::InvalidField {
                        field: "MAXH2CDATA",
                    });
                }
                h.fill(0);
                put16(h, 8, r.pfv);
                h[10] = r.cpda;
                h[11] = dgst_byte(r.hdgst, r.ddgst);
                put32(h, 12, r.maxh2cdata);
            }
            Pdu::H2CTermReq(t) | Pdu::C2HTermReq(t) => {
                h.fill(0);
                put16(h, 8, t.fes);
                put32(h, 10, t.fei);
            }
            Pdu::CapsuleCmd(c) => {
                h[CH_LEN..CAPSULE_CMD_HLEN].copy_from_slice(c.sqe.as_bytes());
            }
            Pdu::CapsuleResp(c) => {
                h[CH_LEN..CAPSULE_RESP_HLEN].copy_from_slice(c.cqe.as_bytes());
            }
            Pdu::H2CData(d) => {
                check_datal(d.datal, data_len)?;
                put16(h, 8, d.cccid);
                put16(h, 10, d.ttag);
                put32(h, 12, d.datao);
                put32(h, 16, d.datal);
                put32(h, 20, 0);
                if d.last {
                    fl |= flags::LAST_PDU;
                }
            }
            Pdu::C2HData(d) => {
                check_datal(d.datal, data_len)?;
                if d.success && !d.last {
                    return Err(EncodeError::InvalidField {
                        field: "SUCCESS without LAST_PDU",
                    });
                }
                put16(h, 8, d.cccid);
                put16(h, 10, 0);
                put32(h, 12, d.datao);
                put32(h, 16, d.datal);
                put32(h, 20, 0);
                if d.last {
                    fl |= flags::LAST_PDU;
                }
                if d.success {
                    fl |= flags::SUCCESS;
                }
            }
            Pdu::R2T(r) => {
                if r.r2tl == 0 {
                    return Err(EncodeError::InvalidField {
                        field: "R2TL of zero",
                    });
                }
                put16(h, 8, r.cccid);
                put16(h, 10, r.ttag);
                put32(h, 12, r.r2to);
                put32(h, 16, r.r2tl);
                put32(h, 20, 0);
            }
        }
        h[0] = ty as u8;
        h[1] = fl;
        h[2] = l.hlen as u8;
        h[3] = l.pdo;
        put32(h, 4, l.plen);
        let mut end = l.hlen;
        if fl & flags::HDGSTF != 0 {
            let d = crc32c::crc32c(&h[..l.hlen]);
            put32(h, l.hlen, d);
            end += DIGEST_LEN;
        }
        h[end..].fill(0);
        Ok(l.header_len)
    }

    /// Appends the header of `pdu` to `out` (see [`Encoder::encode_header`]).
    /// Does not reallocate when `out` has [`MAX_ENCODED_HEADER_LEN`] spare capacity
    /// (or 128 bytes for IC PDUs).
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
        let data_len = u32::try_from(total).map_err(|_| EncodeError::InvalidDataLen {
            pdu_type: pdu.pdu_type(),
            data_len: total,
        })?;
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

    /// CapsuleCmd header for `sqe` with `icd_len` bytes of in-capsule data to follow.
    #[inline]
    pub fn capsule_cmd(
        &self,
        sqe: &Sqe,
        icd_len: u32,
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        self.encode_header(&Pdu::CapsuleCmd(CapsuleCmd { sqe: *sqe }), icd_len, out)
    }

    /// Complete CapsuleResp PDU for `cqe`.
    #[inline]
    pub fn capsule_resp(&self, cqe: &Cqe, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_header(&Pdu::CapsuleResp(CapsuleResp { cqe: *cqe }), 0, out)
    }

    /// H2CData header; `hdr.datal` bytes of data follow.
    #[inline]
    pub fn h2c_data(&self, hdr: &H2CData, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_header(&Pdu::H2CData(*hdr), hdr.datal, out)
    }

    /// C2HData header; `hdr.datal` bytes of data follow.
    #[inline]
    pub fn c2h_data(&self, hdr: &C2HData, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_header(&Pdu::C2HData(*hdr), hdr.datal, out)
    }

    /// Complete R2T PDU.
    #[inline]
    pub fn r2t(&self, r2t: &R2T, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode_header(&Pdu::R2T(*r2t), 0, out)
    }

    /// Complete ICReq PDU (never has digests).
    pub fn ic_req(req: &IcReq, out: &mut [u8]) -> Result<usize, EncodeError> {
        Encoder::default().encode_header(&Pdu::IcReq(*req), 0, out)
    }

    /// Complete ICResp PDU (never has digests).
    pub fn ic_resp(resp: &IcResp, out: &mut [u8]) -> Result<usize, EncodeError> {
        Encoder::default().encode_header(&Pdu::IcResp(*resp), 0, out)
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
            return Err(EncodeError::BufferTooSmall {
                need: total,
                have: out.len(),
            });
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
