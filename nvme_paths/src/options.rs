//! Parameters of controllers and namespaces: transport IDs, timeouts, multipath mode, policy.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors in parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A parameter has an unusable value.
    #[error("invalid {param}: {msg}")]
    Invalid {
        /// The parameter (SPDK name).
        param: &'static str,
        /// What is wrong.
        msg: String,
    },
}

fn invalid(param: &'static str, msg: impl Into<String>) -> OptionsError {
    OptionsError::Invalid {
        param,
        msg: msg.into(),
    }
}

/// Transport identifier of one portal (NVMe-oF 1.1 section 1.5.8 / the discovery log entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Trid {
    /// Transport type: only `tcp`.
    pub trtype: String,
    /// Address family: `ipv4` or `ipv6`.
    pub adrfam: String,
    /// Transport address (IP address).
    pub traddr: String,
    /// Transport service id (TCP port).
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
}

impl Trid {
    /// A TCP/IPv4 transport id.
    pub fn tcp(traddr: &str, trsvcid: &str, subnqn: &str) -> Trid {
        Trid {
            trtype: "tcp".into(),
            adrfam: if traddr.contains(':') { "ipv6" } else { "ipv4" }.into(),
            traddr: traddr.into(),
            trsvcid: trsvcid.into(),
            subnqn: subnqn.into(),
        }
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(invalid(
                "trtype",
                format!("only TCP is supported, got {:?}", self.trtype),
            ));
        }
        if !["ipv4", "ipv6"]
            .iter()
            .any(|a| self.adrfam.eq_ignore_ascii_case(a))
        {
            return Err(invalid(
                "adrfam",
                format!("must be ipv4 or ipv6, got {:?}", self.adrfam),
            ));
        }
        if self.traddr.is_empty() {
            return Err(invalid("traddr", "must not be empty"));
        }
        if self.trsvcid.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(invalid(
                "trsvcid",
                format!("{:?} is not a TCP port", self.trsvcid),
            ));
        }
        check_nqn("subnqn", &self.subnqn)
    }
}

impl fmt::Display for Trid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.traddr, self.trsvcid, self.subnqn)
    }
}

/// Checks an NQN (non-empty, at most 223 bytes, printable ASCII).
pub fn check_nqn(param: &'static str, nqn: &str) -> Result<(), OptionsError> {
    if nqn.is_empty() || nqn.len() > 223 {
        return Err(invalid(param, "must be 1 to 223 bytes"));
    }
    if !nqn.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(invalid(param, "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// What attaching a controller under an existing name does (SPDK's `multipath` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultipathMode {
    /// A second controller under the same name is refused.
    Disable,
    /// Active-passive: the extra controller is a standby path.
    Failover,
    /// Active-active: every usable path carries I/O (the namespace's selector decides).
    #[default]
    Multipath,
}

impl MultipathMode {
    /// The SPDK spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MultipathMode::Disable => "disable",
            MultipathMode::Failover => "failover",
            MultipathMode::Multipath => "multipath",
        }
    }
}

/// Built-in path selection policies for standalone use (without the per-VM scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "selector")]
pub enum PolicyKind {
    /// One path at a time, in attach order; optimized before non-optimized.
    ActivePassive,
    /// Round robin over the best usable paths, switching every `rr_min_io` I/Os.
    RoundRobin {
        /// I/Os sent on a path before moving to the next (at least 1).
        rr_min_io: u32,
    },
    /// The best usable path with the fewest outstanding I/Os.
    QueueDepth,
}

impl Default for PolicyKind {
    fn default() -> Self {
        PolicyKind::RoundRobin { rr_min_io: 1 }
    }
}

/// Per-controller timeouts and transport settings. All durations may be below a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrlOptions {
    /// Keep Alive Timeout sent in Connect (ms; 0 disables keep-alive, which also means an
    /// in-doubt write can only be fenced by `ctrlr_loss_timeout`). A Keep Alive is sent every
    /// KATO / 2.
    pub keep_alive_timeout_ms: u32,
    /// Per-I/O timeout (µs, 0 = none). An I/O not completed in time resets the controller
    /// association (its commands fail over).
    pub io_timeout_us: u64,
    /// Admin command timeout (ms).
    pub admin_timeout_ms: u64,
    /// TCP connect (and ICReq / Connect) timeout (ms).
    pub connect_timeout_ms: u64,
    /// Delay between reconnect attempts (ms).
    pub reconnect_delay_ms: u64,
    /// Give the controller up after it has been unreachable this long (ms; -1 = never).
    pub ctrlr_loss_timeout_ms: i64,
    /// I/O waiting for this path fails (if no other path is usable) once the path has been
    /// down this long (ms; -1 = wait until `ctrlr_loss_timeout_ms`).
    pub fast_io_fail_timeout_ms: i64,
    /// Extra wait after KATO before an in-doubt write is re-issued on another path (ms): the
    /// target's keep-alive check granularity plus its command quiesce time plus network delay.
    pub write_fence_grace_ms: u64,
    /// I/O queue depth (entries per I/O queue).
    pub io_queue_depth: u16,
    /// Request header digests.
    pub hdgst: bool,
    /// Request data digests.
    pub ddgst: bool,
}

impl Default for CtrlOptions {
    fn default() -> Self {
        CtrlOptions {
            keep_alive_timeout_ms: 10_000,
            io_timeout_us: 30_000_000,
            admin_timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            reconnect_delay_ms: 1_000,
            ctrlr_loss_timeout_ms: 60_000,
            fast_io_fail_timeout_ms: -1,
            write_fence_grace_ms: 500,
            io_queue_depth: 128,
            hdgst: false,
            ddgst: false,
        }
    }
}

impl CtrlOptions {
    /// Checks the combination (SPDK's rules for the three recovery timers).
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.io_queue_depth < 2 || self.io_queue_depth > 1024 {
            return Err(invalid("io_queue_depth", "must be 2..=1024"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "must be above 0"));
        }
        if self.admin_timeout_ms == 0 {
            return Err(invalid("admin_timeout_ms", "must be above 0"));
        }
        if self.ctrlr_loss_timeout_ms < -1 {
            return Err(invalid(
                "ctrlr_loss_timeout",
                "must be -1 (never) or at least 0",
            ));
        }
        if self.fast_io_fail_timeout_ms < -1 {
            return Err(invalid(
                "fast_io_fail_timeout",
                "must be -1 (off) or at least 0",
            ));
        }
        if self.ctrlr_loss_timeout_ms >= 0
            && (self.reconnect_delay_ms as i64) > self.ctrlr_loss_timeout_ms
        {
            return Err(invalid(
                "reconnect_delay",
                "must not exceed ctrlr_loss_timeout",
            ));
        }
        if self.ctrlr_loss_timeout_ms >= 0
            && self.fast_io_fail_timeout_ms > self.ctrlr_loss_timeout_ms
        {
            return Err(invalid(
                "fast_io_fail_timeout",
                "must not exceed ctrlr_loss_timeout",
            ));
        }
        Ok(())
    }

    /// KATO as a duration (None when keep-alive is off).
    pub fn kato(&self) -> Option<Duration> {
        (self.keep_alive_timeout_ms > 0)
            .then(|| Duration::from_millis(self.keep_alive_timeout_ms as u64))
    }
}

/// Everything `bdev_nvme_attach_controller` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachParams {
    /// Name of the controller group; namespaces are named `{name}n{nsid}`.
    pub name: String,
    /// Where to connect.
    pub trid: Trid,
    /// Host NQN (None: derived from the host name).
    pub hostnqn: Option<String>,
    /// What a second controller under the same name does.
    pub multipath: MultipathMode,
    /// Timeouts and transport settings.
    pub opts: CtrlOptions,
}

impl AttachParams {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(invalid(
                "name",
                format!("{:?} must be letters, digits, '_', '-' or '.'", self.name),
            ));
        }
        self.trid.validate()?;
        if let Some(h) = &self.hostnqn {
            check_nqn("hostnqn", h)?;
        }
        self.opts.validate()
    }
}

/// The default host NQN: a UUID-based NQN derived from the host name, stable across runs.
pub fn default_hostnqn() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "vmpath".into());
    let u = vmpath_bdev::uuid_from_name(host.trim());
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}",
        vmpath_bdev::uuid_string(&u)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let p = AttachParams {
            name: "Nvme0".into(),
            trid: Trid::tcp("127.0.0.1", "4420", "nqn.2024-01.io.vmpath:s1"),
            hostnqn: None,
            multipath: MultipathMode::Multipath,
            opts: CtrlOptions::default(),
        };
        p.validate().unwrap();
        let mut bad = p.clone();
        bad.trid.trsvcid = "x".into();
        assert!(bad.validate().unwrap_err().to_string().contains("trsvcid"));
        let mut bad = p.clone();
        bad.trid.trtype = "rdma".into();
        assert!(bad.validate().is_err());
        let mut bad = p.clone();
        bad.opts.fast_io_fail_timeout_ms = 90_000;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("fast_io_fail"));
        let mut bad = p;
        bad.name = "a b".into();
        assert!(bad.validate().is_err());
        assert!(default_hostnqn().starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
    }
}
