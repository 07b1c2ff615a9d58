//! Fabrics commands (NVMe-oF 1.1 section 3.3 / NVMe Base 2.0 section 6):
//! Connect (figures 19-22), Property Get (figures 25-26), Property Set
//! (figure 27), Disconnect (figure 23), and the Connect response fields.
//! Authentication is not implemented.

use crate::bytes::{le_fields, text_fields, wire_struct};
use crate::opcode::FabricsType;
use crate::sqe::{Psdt, Sqe, FABRICS_OPCODE};

pub use crate::bytes::NQN_MAX_LEN;
/// The well-known NQN of a discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Controller ID a host puts in Connect data to ask for any controller (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xffff;

/// A zeroed Fabrics command with opcode 7Fh, the given type and command id,
/// and PSDT set to SGL (fabrics never use PRPs).
#[inline]
pub fn fabrics_sqe(fctype: FabricsType, cid: u16) -> Sqe {
    let mut s = Sqe::zeroed();
    s.set_opcode(FABRICS_OPCODE);
    s.set_psdt(Psdt::SglMptrContig);
    s.set_cid(cid);
    s.set_fctype(fctype.as_u8());
    s
}

/// Connect command fields (SQE bytes 40-51).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Connect {
    /// Record format (0).
    pub recfmt: u16,
    /// Queue to create: 0 for the admin queue.
    pub qid: u16,
    /// Submission queue size, 0-based as on the wire (SQSIZE + 1 entries).
    pub sqsize: u16,
    /// Connect attributes: bit 2 = I/O queue deletion / SQ flow control disable.
    pub cattr: u8,
    /// Keep alive timeout in milliseconds (admin queue only; 0 disables).
    pub kato: u32,
}

impl Connect {
    /// Length of the Connect data (the command's data transfer).
    pub const DATA_LEN: usize = ConnectData::SIZE;
    /// CATTR bit: the host asks to disable SQ flow control (SQHD not reported).
    pub const CATTR_SQ_FLOW_CONTROL_DISABLE: u8 = 1 << 2;

    /// Decodes the command fields.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let b = s.as_bytes();
        Connect {
            recfmt: crate::bytes::get(b, 40),
            qid: crate::bytes::get(b, 42),
            sqsize: crate::bytes::get(b, 44),
            cattr: b[46],
            kato: crate::bytes::get(b, 48),
        }
    }
    /// Writes the command fields.
    #[inline]
    pub fn apply(&self, s: &mut Sqe) {
        let b = s.as_bytes_mut();
        crate::bytes::put(b, 40, self.recfmt);
        crate::bytes::put(b, 42, self.qid);
        crate::bytes::put(b, 44, self.sqsize);
        b[46] = self.cattr;
        crate::bytes::put(b, 48, self.kato);
    }
    /// A complete Connect SQE whose SGL describes `ConnectData` in the capsule
    /// (in-capsule data at offset 0, 1024 bytes).
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(FabricsType::Connect, cid);
        s.set_sgl1(crate::sqe::SglDescriptor::in_capsule(
            0,
            Self::DATA_LEN as u32,
        ));
        self.apply(&mut s);
        s
    }
}

wire_struct!(
    /// The 1024-byte Connect command data (NVMe-oF 1.1 figure 20).
    ConnectData, 1024, debug [cntlid, subnqn, hostnqn]
);

impl ConnectData {
    le_fields! { 1024;
        /// Controller ID requested ([`CNTLID_DYNAMIC`] = any).
        cntlid, set_cntlid: u16 @ 16;
    }
    text_fields! { 1024;
        /// NVM subsystem NQN.
        Nqn subnqn, set_subnqn @ 256, 256;
        /// Host NQN.
        Nqn hostnqn, set_hostnqn @ 512, 256;
    }
    /// Host identifier (a 128-bit UUID in wire byte order).
    #[inline]
    pub fn hostid(&self) -> [u8; 16] {
        let mut h = [0u8; 16];
        h.copy_from_slice(&self.0[0..16]);
        h
    }
    /// Sets the host identifier.
    #[inline]
    pub fn set_hostid(&mut self, id: [u8; 16]) {
        self.0[0..16].copy_from_slice(&id);
    }
}

/// Connect response DW0 for a successful Connect: CNTLID (bits 15:0),
/// AUTHREQ (bits 31:16).
#[inline]
pub const fn connect_success_dw0(cntlid: u16, authreq: u16) -> u32 {
    cntlid as u32 | (authreq as u32) << 16
}

/// Connect response DW0 for status [`crate::Status::CONNECT_INVALID_PARAMETERS`]:
/// IPO (bits 15:0) is the byte offset of the invalid parameter, IATTR (byte 2,
/// bit 0) is 1 when the offset is into the Connect data, 0 when into the SQE.
#[inline]
pub const fn connect_invalid_param_dw0(in_data: bool, offset: u16) -> u32 {
    offset as u32 | (in_data as u32) << 16
}

/// Byte offsets of Connect parameters, for [`connect_invalid_param_dw0`].
pub mod connect_offset {
    /// SQE: QID.
    pub const QID: u16 = 42;
    /// SQE: SQSIZE.
    pub const SQSIZE: u16 = 44;
    /// SQE: CATTR.
    pub const CATTR: u16 = 46;
    /// SQE: KATO.
    pub const KATO: u16 = 48;
    /// Data: HOSTID.
    pub const HOSTID: u16 = 0;
    /// Data: CNTLID.
    pub const CNTLID: u16 = 16;
    /// Data: SUBNQN.
    pub const SUBNQN: u16 = 256;
    /// Data: HOSTNQN.
    pub const HOSTNQN: u16 = 512;
}

/// Property Get: ATTRIB.SIZE (byte 40 bits 2:0: 0 = 4 bytes, 1 = 8 bytes), OFST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropertyGet {
    /// True for an 8-byte property access.
    pub size8: bool,
    /// Property offset (see [`crate::regs::offset`]).
    pub offset: u32,
    /// The raw ATTRIB byte, kept for reserved-bit checks.
    pub attrib: u8,
}

impl PropertyGet {
    /// Decodes the command fields.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let b = s.as_bytes();
        PropertyGet {
            size8: b[40] & 7 == 1,
            offset: crate::bytes::get(b, 44),
            attrib: b[40],
        }
    }
    /// A complete Property Get SQE.
    pub fn to_sqe(offset: u32, size8: bool, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(FabricsType::PropertyGet, cid);
        s.as_bytes_mut()[40] = size8 as u8;
        crate::bytes::put(s.as_bytes_mut(), 44, offset);
        s
    }
}

/// Property Set: ATTRIB, OFST and an 8-byte VALUE (bytes 48-55).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropertySet {
    /// True for an 8-byte property access.
    pub size8: bool,
    /// Property offset.
    pub offset: u32,
    /// Value (only the low 4 bytes are meaningful for 4-byte properties).
    pub value: u64,
    /// The raw ATTRIB byte.
    pub attrib: u8,
}

impl PropertySet {
    /// Decodes the command fields.
    #[inline]
    pub fn from_sqe(s: &Sqe) -> Self {
        let b = s.as_bytes();
        PropertySet {
            size8: b[40] & 7 == 1,
            offset: crate::bytes::get(b, 44),
            value: crate::bytes::get(b, 48),
            attrib: b[40],
        }
    }
    /// A complete Property Set SQE.
    pub fn to_sqe(offset: u32, size8: bool, value: u64, cid: u16) -> Sqe {
        let mut s = fabrics_sqe(FabricsType::PropertySet, cid);
        s.as_bytes_mut()[40] = size8 as u8;
        crate::bytes::put(s.as_bytes_mut(), 44, offset);
        crate::bytes::put(s.as_bytes_mut(), 48, value);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_layout() {
        let c = Connect {
            recfmt: 0,
            qid: 3,
            sqsize: 127,
            cattr: 0,
            kato: 15_000,
        };
        let s = c.to_sqe(9);
        let b = s.as_bytes();
        assert_eq!(b[0], 0x7f);
        assert_eq!(b[4], 0x01);
        assert_eq!(&b[42..44], &[3, 0]);
        assert_eq!(&b[44..46], &[127, 0]);
        assert_eq!(u32::from_le_bytes([b[48], b[49], b[50], b[51]]), 15_000);
        assert_eq!(s.sgl1().length(), 1024);
        assert!(s.sgl1().is_in_capsule());
        assert_eq!(Connect::from_sqe(&s), c);
        assert_eq!(s.cid(), 9);
        assert_eq!(s.psdt(), Psdt::SglMptrContig);
    }

    #[test]
    fn connect_data_layout() {
        let mut d = ConnectData::zeroed();
        d.set_hostid([7; 16]);
        d.set_cntlid(CNTLID_DYNAMIC);
        d.set_subnqn("nqn.2024-01.io.vmpath:sub1").unwrap();
        d.set_hostnqn("nqn.2014-08.org.nvmexpress:uuid:1").unwrap();
        assert_eq!(&d.0[16..18], &[0xff, 0xff]);
        assert_eq!(&d.0[256..260], b"nqn.");
        assert_eq!(&d.0[512..516], b"nqn.");
        assert_eq!(d.subnqn().unwrap(), "nqn.2024-01.io.vmpath:sub1");
        assert_eq!(d.hostnqn().unwrap(), "nqn.2014-08.org.nvmexpress:uuid:1");
        assert_eq!(d.hostid(), [7; 16]);
        let long = "n".repeat(NQN_MAX_LEN + 1);
        assert!(d.set_subnqn(&long).is_err());
        assert!(d.set_subnqn(&long[..NQN_MAX_LEN]).is_ok());
    }

    #[test]
    fn property_commands() {
        let g = PropertyGet::to_sqe(0x1c, false, 4);
        assert_eq!(g.fctype(), FabricsType::PropertyGet as u8);
        let p = PropertyGet::from_sqe(&g);
        assert_eq!((p.size8, p.offset), (false, 0x1c));
        let s = PropertySet::to_sqe(0x14, false, 0x0046_0001, 5);
        let p = PropertySet::from_sqe(&s);
        assert_eq!((p.size8, p.offset, p.value), (false, 0x14, 0x0046_0001));
        assert_eq!(connect_success_dw0(0x10, 0), 0x10);
        assert_eq!(
            connect_invalid_param_dw0(true, connect_offset::SUBNQN),
            0x1_0100
        );
    }
}
