//! NVMe-over-TCP subsystems this node exports: `[[nvmf_subsystem]]` tables with their
//! namespaces (`[[nvmf_subsystem.namespace]]`) and portals (`[[nvmf_subsystem.listener]]`).
//! The field names are SPDK's `scripts/rpc.py` parameter names (`nvmf_create_subsystem`:
//! `nqn`, `serial_number`, `model_number`, `allow_any_host`; `nvmf_subsystem_add_ns`:
//! `bdev_name`, `nsid`, `anagrpid`; `nvmf_subsystem_add_listener`: `trtype`, `adrfam`,
//! `traddr`, `trsvcid`, plus the listener's initial `ana_state`), so these structs double as
//! the RPC params.
//!
//! ```toml
//! [[nvmf_subsystem]]
//! nqn = "nqn.2016-06.io.vmpath:cnode1"
//! serial_number = "VMPATH00000000000001"
//! allow_any_host = true
//! [[nvmf_subsystem.namespace]]
//! bdev_name = "Malloc0"
//! nsid = 1
//! [[nvmf_subsystem.listener]]
//! traddr = "127.0.0.1"
//! trsvcid = "4420"
//! ```

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::ParamError;

/// Default NVMe/TCP service id.
pub const DEFAULT_NVMF_PORT: &str = "4420";
/// Default model number of exported subsystems.
pub const DEFAULT_MODEL: &str = "vmpath";
/// Default serial number of exported subsystems.
pub const DEFAULT_SERIAL: &str = "VMPATH00000000000001";
/// ANA states a listener may be given.
pub const ANA_STATES: [&str; 3] = ["optimized", "non_optimized", "inaccessible"];

/// One exported subsystem (`[[nvmf_subsystem]]`, RPC `nvmf_create_subsystem`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfSubsystemConfig {
    /// NVMe Qualified Name.
    pub nqn: String,
    /// Serial number (printable ASCII, at most 20 bytes).
    #[serde(default = "default_serial")]
    pub serial_number: String,
    /// Model number (printable ASCII, at most 40 bytes).
    #[serde(default = "default_model")]
    pub model_number: String,
    /// Any host may connect (else only `hosts`).
    #[serde(default)]
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Namespaces, in NSID order of creation.
    #[serde(rename = "namespace", default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NvmfNamespaceConfig>,
    /// Portals.
    #[serde(rename = "listener", default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<NvmfListenerConfig>,
}

/// A namespace (`[[nvmf_subsystem.namespace]]`, RPC `nvmf_subsystem_add_ns`'s `namespace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfNamespaceConfig {
    /// The block device to export.
    pub bdev_name: String,
    /// NSID (absent: the lowest free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
    /// ANA group (absent: the NSID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anagrpid: Option<u32>,
}

/// A portal (`[[nvmf_subsystem.listener]]`, RPC `nvmf_subsystem_add_listener`'s
/// `listen_address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfListenerConfig {
    /// Transport: `tcp`.
    #[serde(default = "default_trtype")]
    pub trtype: String,
    /// Address family: `ipv4` or `ipv6` (absent: from `traddr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adrfam: Option<String>,
    /// IP address to listen on.
    pub traddr: String,
    /// TCP port (default 4420).
    #[serde(default = "default_port")]
    pub trsvcid: String,
    /// Initial ANA state of every ANA group through this portal.
    #[serde(default = "default_ana")]
    pub ana_state: String,
}

fn default_serial() -> String {
    DEFAULT_SERIAL.into()
}
fn default_model() -> String {
    DEFAULT_MODEL.into()
}
fn default_trtype() -> String {
    "tcp".into()
}
fn default_port() -> String {
    DEFAULT_NVMF_PORT.into()
}
fn default_ana() -> String {
    "optimized".into()
}

/// Checks an NQN: `nqn.yyyy-mm.` prefix, at most 223 bytes, no whitespace or control
/// characters (NVMe Base 2.0 §4.5).
pub fn validate_nqn(field: &str, nqn: &str) -> Result<(), ParamError> {
    let b = nqn.as_bytes();
    let shape = b.len() > 12
        && nqn.starts_with("nqn.")
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'.';
    if !shape {
        return Err(ParamError::new(
            field,
            format!("{nqn:?} is not of the form nqn.yyyy-mm.reverse-domain:name"),
        ));
    }
    if nqn.len() > 223 {
        return Err(ParamError::new(
            field,
            format!("must be at most 223 bytes, got {}", nqn.len()),
        ));
    }
    if nqn.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ParamError::new(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

fn ascii(field: &str, s: &str, max: usize) -> Result<(), ParamError> {
    if s.len() > max || !s.bytes().all(|c| (0x20..0x7f).contains(&c)) {
        return Err(ParamError::new(
            field,
            format!("must be printable ASCII of at most {max} bytes, got {s:?}"),
        ));
    }
    Ok(())
}

impl NvmfNamespaceConfig {
    /// Checks the fields (the bdev's existence is checked against the whole config).
    pub fn validate(&self) -> Result<(), ParamError> {
        if self.bdev_name.is_empty() {
            return Err(ParamError::new("bdev_name", "must not be empty"));
        }
        if matches!(self.nsid, Some(0) | Some(u32::MAX)) {
            return Err(ParamError::new("nsid", "must be 1..=4294967294"));
        }
        if self.anagrpid == Some(0) {
            return Err(ParamError::new("anagrpid", "must be at least 1"));
        }
        Ok(())
    }
}

impl NvmfListenerConfig {
    /// A TCP portal with the default ANA state.
    pub fn tcp(traddr: impl Into<String>, trsvcid: impl Into<String>) -> Self {
        NvmfListenerConfig {
            trtype: default_trtype(),
            adrfam: None,
            traddr: traddr.into(),
            trsvcid: trsvcid.into(),
            ana_state: default_ana(),
        }
    }

    /// Checks the fields.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(ParamError::new(
                "trtype",
                format!("only tcp is supported, got {:?}", self.trtype),
            ));
        }
        let ip: IpAddr = self.traddr.parse().map_err(|_| {
            ParamError::new("traddr", format!("{:?} is not an IP address", self.traddr))
        })?;
        if let Some(f) = &self.adrfam {
            let ok = match f.to_ascii_lowercase().as_str() {
                "ipv4" => ip.is_ipv4(),
                "ipv6" => ip.is_ipv6(),
                _ => {
                    return Err(ParamError::new(
                        "adrfam",
                        format!("must be ipv4 or ipv6, got {f:?}"),
                    ))
                }
            };
            if !ok {
                return Err(ParamError::new(
                    "adrfam",
                    format!("{f} does not match traddr {}", self.traddr),
                ));
            }
        }
        self.trsvcid.parse::<u16>().map_err(|_| {
            ParamError::new("trsvcid", format!("{:?} is not a TCP port", self.trsvcid))
        })?;
        if !ANA_STATES.contains(&self.ana_state.as_str()) {
            return Err(ParamError::new(
                "ana_state",
                format!(
                    "must be one of {}, got {:?}",
                    ANA_STATES.join(", "),
                    self.ana_state
                ),
            ));
        }
        Ok(())
    }

    /// True if both name the same portal.
    pub fn same_portal(&self, o: &NvmfListenerConfig) -> bool {
        if self.trsvcid == "0" || o.trsvcid == "0" {
            // A kernel-chosen port is a distinct portal.
            return false;
        }
        let a: Option<IpAddr> = self.traddr.parse().ok();
        let b: Option<IpAddr> = o.traddr.parse().ok();
        a == b && self.trsvcid.parse::<u16>().ok() == o.trsvcid.parse::<u16>().ok()
    }
}

impl NvmfSubsystemConfig {
    /// A subsystem with default serial and model, no namespaces or listeners.
    pub fn new(nqn: impl Into<String>) -> Self {
        NvmfSubsystemConfig {
            nqn: nqn.into(),
            serial_number: default_serial(),
            model_number: default_model(),
            allow_any_host: false,
            hosts: Vec::new(),
            namespaces: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// Checks the subsystem's own fields (not its namespaces or listeners).
    pub fn validate_own(&self) -> Result<(), ParamError> {
        validate_nqn("nqn", &self.nqn)?;
        if self.nqn == "nqn.2014-08.org.nvmexpress.discovery" {
            return Err(ParamError::new("nqn", "the discovery NQN is reserved"));
        }
        ascii("serial_number", &self.serial_number, 20)?;
        ascii("model_number", &self.model_number, 40)?;
        for h in &self.hosts {
            validate_nqn("hosts", h)?;
        }
        Ok(())
    }

    /// Checks every field; the error's field is a path below the subsystem
    /// (`namespace[0].nsid`, `listener[1].trsvcid`).
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_own()?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            ns.validate()
                .map_err(|e| ParamError::new(format!("namespace[{i}].{}", e.field), e.message))?;
            if let Some(n) = ns.nsid {
                if let Some(j) = self.namespaces[..i].iter().position(|o| o.nsid == Some(n)) {
                    return Err(ParamError::new(
                        format!("namespace[{i}].nsid"),
                        format!("NSID {n} is already used by namespace[{j}]"),
                    ));
                }
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate()
                .map_err(|e| ParamError::new(format!("listener[{i}].{}", e.field), e.message))?;
            if let Some(j) = self.listeners[..i].iter().position(|o| o.same_portal(l)) {
                return Err(ParamError::new(
                    format!("listener[{i}].trsvcid"),
                    format!("the same portal as listener[{j}]"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> NvmfSubsystemConfig {
        let mut s = NvmfSubsystemConfig::new("nqn.2016-06.io.vmpath:cnode1");
        s.namespaces.push(NvmfNamespaceConfig {
            bdev_name: "Malloc0".into(),
            nsid: Some(1),
            anagrpid: None,
        });
        s.listeners
            .push(NvmfListenerConfig::tcp("127.0.0.1", "4420"));
        s
    }

    #[test]
    fn validation_names_the_field() {
        sub().validate().unwrap();
        let mut s = sub();
        s.nqn = "cnode1".into();
        assert_eq!(s.validate().unwrap_err().field, "nqn");
        let mut s = sub();
        s.serial_number = "x".repeat(21);
        assert_eq!(s.validate().unwrap_err().field, "serial_number");
        let mut s = sub();
        s.listeners[0].trsvcid = "70000".into();
        assert_eq!(s.validate().unwrap_err().field, "listener[0].trsvcid");
        let mut s = sub();
        s.listeners[0].trtype = "rdma".into();
        assert_eq!(s.validate().unwrap_err().field, "listener[0].trtype");
        let mut s = sub();
        s.listeners[0].adrfam = Some("ipv6".into());
        assert_eq!(s.validate().unwrap_err().field, "listener[0].adrfam");
        let mut s = sub();
        s.listeners[0].ana_state = "sideways".into();
        assert_eq!(s.validate().unwrap_err().field, "listener[0].ana_state");
        let mut s = sub();
        s.listeners
            .push(NvmfListenerConfig::tcp("127.0.0.1", "04420"));
        assert_eq!(s.validate().unwrap_err().field, "listener[1].trsvcid");
        let mut s = sub();
        s.namespaces.push(s.namespaces[0].clone());
        assert_eq!(s.validate().unwrap_err().field, "namespace[1].nsid");
        let mut s = sub();
        s.namespaces[0].nsid = Some(0);
        assert_eq!(s.validate().unwrap_err().field, "namespace[0].nsid");
        let mut s = sub();
        s.hosts.push("bad host".into());
        assert_eq!(s.validate().unwrap_err().field, "hosts");
    }

    #[test]
    fn rpc_json_uses_spdk_names() {
        let j = r#"{"nqn": "nqn.2016-06.io.spdk:cnode1", "serial_number": "SPDK001", "allow_any_host": true}"#;
        let s: NvmfSubsystemConfig = serde_json::from_str(j).unwrap();
        assert_eq!(s.model_number, DEFAULT_MODEL);
        assert!(s.allow_any_host);
        let l: NvmfListenerConfig = serde_json::from_str(
            r#"{"trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.0.1", "trsvcid": "4420"}"#,
        )
        .unwrap();
        l.validate().unwrap();
        assert_eq!(l.ana_state, "optimized");
        assert!(
            serde_json::from_str::<NvmfNamespaceConfig>(r#"{"bdev_name": "M", "colour": 1}"#)
                .is_err()
        );
    }
}
