//! Target-wide limits and protocol parameters ([`TargetOptions`]).

/// Errors of [`TargetOptions::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A field is out of range.
    #[error("invalid target option {field}: {msg}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        msg: String,
    },
}

/// Limits and NVMe/TCP parameters of a [`crate::Target`] (SPDK's `nvmf_create_transport`
/// options for the TCP transport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    /// Entries of an I/O queue (CAP.MQES + 1); a Connect asking for more is refused.
    pub max_io_queue_depth: u16,
    /// Entries of an admin queue.
    pub max_admin_queue_depth: u16,
    /// I/O queues per controller (Number of Queues feature upper bound).
    pub max_io_queues: u16,
    /// In-capsule data a command capsule may carry (IOCCSZ - 64 bytes). At least 1024 so a
    /// Connect's data fits.
    pub in_capsule_data_size: u32,
    /// MAXH2CDATA advertised in ICResp: the largest H2CData PDU the host may send.
    pub max_h2c_data: u32,
    /// Largest C2HData PDU this target sends; longer reads are split (multi-PDU reads).
    pub max_c2h_data: u32,
    /// Largest data transfer of one command in bytes (MDTS); a power of two >= 4096.
    pub max_io_size: u32,
    /// CPDA advertised in ICResp (H2C data alignment (CPDA+1)*4 bytes).
    pub cpda: u8,
    /// Asynchronous Event Requests a controller keeps outstanding (AERL + 1).
    pub max_aer: u8,
    /// Receive buffer per connection, in bytes.
    pub rx_buffer_size: usize,
    /// Largest NSID (Identify Controller NN) and largest ANA group id.
    pub max_namespaces: u32,
    /// Connections that have not completed Connect within this many milliseconds are closed.
    pub connect_timeout_ms: u64,
    /// Connections the target accepts at once; further ones are closed at accept.
    pub max_connections: usize,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            max_io_queue_depth: 128,
            max_admin_queue_depth: 32,
            max_io_queues: 64,
            in_capsule_data_size: 8192,
            max_h2c_data: 128 * 1024,
            max_c2h_data: 128 * 1024,
            max_io_size: 128 * 1024,
            cpda: 0,
            max_aer: 4,
            rx_buffer_size: 64 * 1024,
            max_namespaces: 1024,
            connect_timeout_ms: 10_000,
            max_connections: 4096,
        }
    }
}

fn bad(field: &'static str, msg: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        field,
        msg: msg.into(),
    }
}

impl TargetOptions {
    /// Checks every field against the protocol's limits.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !(2..=4096).contains(&self.max_io_queue_depth) {
            return Err(bad("max_io_queue_depth", "must be 2..=4096"));
        }
        if !(2..=4096).contains(&self.max_admin_queue_depth) {
            return Err(bad("max_admin_queue_depth", "must be 2..=4096"));
        }
        if self.max_io_queues == 0 || self.max_io_queues == u16::MAX {
            return Err(bad("max_io_queues", "must be 1..=65534"));
        }
        if self.in_capsule_data_size < 1024
            || !self.in_capsule_data_size.is_multiple_of(16)
            || self.in_capsule_data_size > 1 << 20
        {
            return Err(bad(
                "in_capsule_data_size",
                "must be a multiple of 16 in 1024..=1 MiB",
            ));
        }
        if self.max_h2c_data < nvme_tcp::pdu::MIN_MAXH2CDATA || !self.max_h2c_data.is_multiple_of(4)
        {
            return Err(bad(
                "max_h2c_data",
                "must be at least 4096 and a multiple of 4",
            ));
        }
        if self.max_c2h_data < 512 {
            return Err(bad("max_c2h_data", "must be at least 512"));
        }
        if !self.max_io_size.is_power_of_two()
            || self.max_io_size < 4096
            || self.max_io_size > 1 << 30
        {
            return Err(bad("max_io_size", "must be a power of two in 4096..=1 GiB"));
        }
        if self.cpda > nvme_tcp::pdu::MAX_PDA {
            return Err(bad("cpda", "must be 0..=31"));
        }
        if self.max_aer == 0 {
            return Err(bad("max_aer", "must be at least 1"));
        }
        if self.rx_buffer_size < 4096 {
            return Err(bad("rx_buffer_size", "must be at least 4096"));
        }
        if self.max_namespaces == 0 || self.max_namespaces > 0xffff_fffe {
            return Err(bad("max_namespaces", "must be 1..=0xfffffffe"));
        }
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        Ok(())
    }

    /// MDTS as reported in Identify Controller: a power of two of the 4 KiB minimum page.
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).trailing_zeros() as u8
    }

    /// IOCCSZ in 16-byte units (SQE plus in-capsule data).
    pub fn ioccsz(&self) -> u32 {
        (64 + self.in_capsule_data_size) / 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_derived_fields() {
        let o = TargetOptions::default();
        o.validate().unwrap();
        assert_eq!(o.mdts(), 5);
        assert_eq!(o.ioccsz(), (64 + 8192) / 16);
        let mut b = o.clone();
        b.max_io_size = 3000;
        assert!(b.validate().is_err());
        let mut b = o.clone();
        b.in_capsule_data_size = 512;
        assert!(b.validate().is_err());
        let mut b = o;
        b.max_h2c_data = 1000;
        assert!(b.validate().is_err());
    }
}
