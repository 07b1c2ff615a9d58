//! NVMe/TCP controllers the host attaches: `[[nvme_controller]]` tables, which double as the
//! params of the `bdev_nvme_attach_controller` RPC (SPDK's names: `name`, `trtype`, `adrfam`,
//! `traddr`, `trsvcid`, `subnqn`, `hostnqn`, `multipath`, `ctrlr_loss_timeout_sec`,
//! `reconnect_delay_sec`, `fast_io_fail_timeout_sec`; `keep_alive_timeout_ms` and `timeout_us`
//! as in `bdev_nvme_set_options`). Every timer also has a millisecond form (`*_ms`) for
//! sub-second values; giving both forms of one timer is an error.
//!
//! ```toml
//! [[nvme_controller]]
//! name = "Nvme0"
//! traddr = "10.0.1.2"
//! trsvcid = "4420"
//! subnqn = "nqn.2024-01.io.vmpath:disk1"
//! [[nvme_controller]]           # a second path to the same namespaces
//! name = "Nvme0"
//! traddr = "10.0.2.2"
//! subnqn = "nqn.2024-01.io.vmpath:disk1"
//! fast_io_fail_timeout_ms = 500
//! ```

use serde::{Deserialize, Serialize};

use crate::error::ParamError;

/// Default NVMe/TCP port.
pub const DEFAULT_TRSVCID: &str = "4420";

/// One controller to attach (a path to a subsystem through one portal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeControllerConfig {
    /// Controller group name; namespaces become bdevs `{name}n{nsid}`. Controllers sharing a
    /// name are paths of the same namespaces.
    pub name: String,
    /// Transport type: `tcp`.
    #[serde(default = "default_trtype")]
    pub trtype: String,
    /// Address family: `ipv4` or `ipv6`.
    #[serde(default = "default_adrfam")]
    pub adrfam: String,
    /// Target address.
    pub traddr: String,
    /// Target port (default 4420).
    #[serde(default = "default_trsvcid")]
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN (default: derived from the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnqn: Option<String>,
    /// `disable`, `failover` or `multipath` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<String>,
    /// Give the controller up after this long unreachable (s; -1 = never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctrlr_loss_timeout_sec: Option<i64>,
    /// Same in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctrlr_loss_timeout_ms: Option<i64>,
    /// Delay between reconnect attempts (s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_delay_sec: Option<u64>,
    /// Same in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_delay_ms: Option<u64>,
    /// Fail I/O waiting for this path after it has been down this long (s; -1 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_io_fail_timeout_sec: Option<i64>,
    /// Same in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_io_fail_timeout_ms: Option<i64>,
    /// Keep Alive Timeout (ms; 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_timeout_ms: Option<u32>,
    /// Per-I/O timeout (µs; 0 = none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_us: Option<u64>,
    /// Admin command timeout (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_admin_ms: Option<u64>,
    /// TCP connect timeout (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Extra wait after KATO before an in-doubt write is re-issued elsewhere (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_fence_grace_ms: Option<u64>,
    /// Entries per I/O queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_queue_depth: Option<u16>,
    /// Request header digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdgst: Option<bool>,
    /// Request data digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddgst: Option<bool>,
}

fn default_trtype() -> String {
    "tcp".into()
}
fn default_adrfam() -> String {
    "ipv4".into()
}
fn default_trsvcid() -> String {
    DEFAULT_TRSVCID.into()
}

/// Picks the one given form of a timer, converted to milliseconds.
fn one_of<T: Copy>(
    sec_field: &'static str,
    sec: Option<T>,
    ms: Option<T>,
    to_ms: impl Fn(T) -> Option<T>,
) -> Result<Option<T>, ParamError> {
    match (sec, ms) {
        (Some(_), Some(_)) => Err(ParamError::new(
            sec_field,
            "give either the _sec or the _ms form, not both",
        )),
        (Some(s), None) => to_ms(s)
            .map(Some)
            .ok_or_else(|| ParamError::new(sec_field, "value too large")),
        (None, m) => Ok(m),
    }
}

/// The timers of a controller in milliseconds (None = not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NvmeTimers {
    /// ctrlr_loss_timeout in ms.
    pub ctrlr_loss_timeout_ms: Option<i64>,
    /// reconnect_delay in ms.
    pub reconnect_delay_ms: Option<u64>,
    /// fast_io_fail_timeout in ms.
    pub fast_io_fail_timeout_ms: Option<i64>,
}

impl NvmeControllerConfig {
    /// The timers normalised to milliseconds.
    pub fn timers(&self) -> Result<NvmeTimers, ParamError> {
        let neg = |v: i64| if v < 0 { Some(v) } else { v.checked_mul(1000) };
        Ok(NvmeTimers {
            ctrlr_loss_timeout_ms: one_of(
                "ctrlr_loss_timeout_sec",
                self.ctrlr_loss_timeout_sec,
                self.ctrlr_loss_timeout_ms,
                neg,
            )?,
            reconnect_delay_ms: one_of(
                "reconnect_delay_sec",
                self.reconnect_delay_sec,
                self.reconnect_delay_ms,
                |v: u64| v.checked_mul(1000),
            )?,
            fast_io_fail_timeout_ms: one_of(
                "fast_io_fail_timeout_sec",
                self.fast_io_fail_timeout_sec,
                self.fast_io_fail_timeout_ms,
                neg,
            )?,
        })
    }

    /// The `multipath` mode (default `multipath`).
    pub fn multipath_mode(&self) -> &str {
        self.multipath.as_deref().unwrap_or("multipath")
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ParamError::new(
                "name",
                format!(
                    "{:?} must be 1 to 64 letters, digits, '_', '-' or '.'",
                    self.name
                ),
            ));
        }
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(ParamError::new(
                "trtype",
                format!("only \"tcp\" is supported, got {:?}", self.trtype),
            ));
        }
        if !["ipv4", "ipv6"]
            .iter()
            .any(|a| self.adrfam.eq_ignore_ascii_case(a))
        {
            return Err(ParamError::new(
                "adrfam",
                format!("must be \"ipv4\" or \"ipv6\", got {:?}", self.adrfam),
            ));
        }
        if self.traddr.is_empty() || self.traddr.len() > 255 {
            return Err(ParamError::new("traddr", "must be 1 to 255 characters"));
        }
        if self.trsvcid.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(ParamError::new(
                "trsvcid",
                format!("{:?} is not a TCP port", self.trsvcid),
            ));
        }
        for (field, nqn) in [
            ("subnqn", Some(&self.subnqn)),
            ("hostnqn", self.hostnqn.as_ref()),
        ] {
            if let Some(n) = nqn {
                if n.is_empty() || n.len() > 223 || !n.bytes().all(|b| (0x21..0x7f).contains(&b)) {
                    return Err(ParamError::new(
                        field,
                        "must be 1 to 223 printable ASCII characters without spaces",
                    ));
                }
            }
        }
        if !["disable", "failover", "multipath"].contains(&self.multipath_mode()) {
            return Err(ParamError::new(
                "multipath",
                format!(
                    "must be \"disable\", \"failover\" or \"multipath\", got {:?}",
                    self.multipath_mode()
                ),
            ));
        }
        let t = self.timers()?;
        if t.ctrlr_loss_timeout_ms.is_some_and(|v| v < -1000) {
            return Err(ParamError::new(
                "ctrlr_loss_timeout_sec",
                "must be -1 or at least 0",
            ));
        }
        if t.fast_io_fail_timeout_ms.is_some_and(|v| v < -1000) {
            return Err(ParamError::new(
                "fast_io_fail_timeout_sec",
                "must be -1 or at least 0",
            ));
        }
        if let Some(d) = self.io_queue_depth {
            if !(2..=1024).contains(&d) {
                return Err(ParamError::new("io_queue_depth", "must be 2 to 1024"));
            }
        }
        if self.timeout_admin_ms == Some(0) {
            return Err(ParamError::new("timeout_admin_ms", "must be above 0"));
        }
        if self.connect_timeout_ms == Some(0) {
            return Err(ParamError::new("connect_timeout_ms", "must be above 0"));
        }
        Ok(())
    }

    /// True if `other` is the same path (same name, address, port and subsystem).
    pub fn same_path(&self, other: &NvmeControllerConfig) -> bool {
        self.name == other.name
            && self.traddr == other.traddr
            && self.trsvcid == other.trsvcid
            && self.subnqn == other.subnqn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NvmeControllerConfig {
        serde_json::from_value(serde_json::json!({
            "name": "Nvme0", "traddr": "10.0.0.2", "subnqn": "nqn.2024-01.io.vmpath:s"
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_timers() {
        let c = base();
        assert_eq!(
            (c.trtype.as_str(), c.adrfam.as_str(), c.trsvcid.as_str()),
            ("tcp", "ipv4", "4420")
        );
        c.validate().unwrap();
        let mut c = base();
        c.ctrlr_loss_timeout_sec = Some(-1);
        c.reconnect_delay_sec = Some(2);
        c.fast_io_fail_timeout_ms = Some(500);
        let t = c.timers().unwrap();
        assert_eq!(t.ctrlr_loss_timeout_ms, Some(-1));
        assert_eq!(t.reconnect_delay_ms, Some(2000));
        assert_eq!(t.fast_io_fail_timeout_ms, Some(500));
        c.reconnect_delay_ms = Some(5);
        assert_eq!(c.validate().unwrap_err().field, "reconnect_delay_sec");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = base();
        c.trsvcid = "http".into();
        assert_eq!(c.validate().unwrap_err().field, "trsvcid");
        let mut c = base();
        c.multipath = Some("sometimes".into());
        assert_eq!(c.validate().unwrap_err().field, "multipath");
        let mut c = base();
        c.trtype = "rdma".into();
        assert_eq!(c.validate().unwrap_err().field, "trtype");
        let e = serde_json::from_value::<NvmeControllerConfig>(serde_json::json!({
            "name": "a", "traddr": "x", "subnqn": "n", "bogus": 1
        }))
        .unwrap_err();
        assert!(e.to_string().contains("bogus"));
    }

    #[test]
    fn config_file_section_round_trips_and_names_errors() {
        let text = r#"
[[nvme_controller]]
name = "Nvme0"
traddr = "10.0.1.2"
subnqn = "nqn.2024-01.io.vmpath:disk1"
keep_alive_timeout_ms = 2000
[[nvme_controller]]
name = "Nvme0"
traddr = "10.0.2.2"
subnqn = "nqn.2024-01.io.vmpath:disk1"
fast_io_fail_timeout_ms = 500
multipath = "failover"
"#;
        let c = crate::Config::from_str(text, "t.toml").unwrap();
        assert_eq!(c.nvme_controllers.len(), 2);
        assert_eq!(c.nvme_controllers[1].fast_io_fail_timeout_ms, Some(500));
        let back = crate::Config::from_str(&c.to_toml_string().unwrap(), "saved").unwrap();
        assert_eq!(back, c);
        let dup = format!("{text}[[nvme_controller]]\nname = \"Nvme0\"\ntraddr = \"10.0.1.2\"\nsubnqn = \"nqn.2024-01.io.vmpath:disk1\"\n");
        let e = crate::Config::from_str(&dup, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nvme_controller[2]") && e.contains("same path"),
            "{e}"
        );
        let bad = text.replace("10.0.2.2\"", "10.0.2.2\"\ntrsvcid = \"x\"");
        let e = crate::Config::from_str(&bad, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nvme_controller[1].trsvcid"), "{e}");
    }
}
