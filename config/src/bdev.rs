//! Block-device parameters, shared by the config file (`[[bdev]]` tables) and the JSON-RPC
//! methods `bdev_malloc_create`, `bdev_null_create` and `bdev_uring_create`.
//!
//! Field names follow SPDK's `scripts/rpc.py` where SPDK has the parameter (`name`,
//! `num_blocks`, `block_size`, `filename`, `uuid`); the simulation knobs (`latency_us`,
//! `max_iops`, `max_bw_mbps`) play the role of SPDK's delay bdev and QoS limits.
//! Every struct rejects unknown fields, so a typo in a config file or an RPC is an error.

use serde::{Deserialize, Serialize};

use crate::error::ParamError;

/// Block sizes a bdev may have, in bytes.
pub const BLOCK_SIZES: [u32; 2] = [512, 4096];
/// Longest bdev name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest simulated latency, in microseconds (10 s).
pub const MAX_LATENCY_US: u64 = 10_000_000;
/// Largest capacity or rate a parameter may hold: TOML integers are signed 64-bit, and a
/// value that `save_config` could not write back is refused up front.
pub const MAX_INT: u64 = i64::MAX as u64;

/// The kind of a block device: the value of `type` in a `[[bdev]]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BdevKind {
    /// Completes every I/O without moving data (for benchmarks).
    Null,
    /// RAM-backed.
    Malloc,
    /// io_uring on a file or block device.
    Uring,
}

impl BdevKind {
    /// The name used in configs and RPC results.
    pub fn as_str(self) -> &'static str {
        match self {
            BdevKind::Null => "null",
            BdevKind::Malloc => "malloc",
            BdevKind::Uring => "uring",
        }
    }
}

impl std::fmt::Display for BdevKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Simulation knobs of the null and malloc backends, copied out of their params.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimParams {
    /// Fixed latency added to every I/O, in microseconds (0 = none).
    pub latency_us: u64,
    /// I/O operations per second the device can do (0 = unlimited).
    pub max_iops: u64,
    /// Bandwidth the device can do, in MiB/s (1 MiB = 1,048,576 bytes; 0 = unlimited).
    pub max_bw_mbps: u64,
}

impl SimParams {
    /// True when no knob is set (the device runs at full speed).
    pub fn is_unlimited(&self) -> bool {
        *self == SimParams::default()
    }

    fn validate(&self) -> Result<(), ParamError> {
        if self.latency_us > MAX_LATENCY_US {
            return Err(ParamError::new(
                "latency_us",
                format!(
                    "must be at most {MAX_LATENCY_US} (10 s), got {}",
                    self.latency_us
                ),
            ));
        }
        for (field, value) in [
            ("max_iops", self.max_iops),
            ("max_bw_mbps", self.max_bw_mbps),
        ] {
            if value > MAX_INT {
                return Err(ParamError::new(
                    field,
                    format!("must be at most {MAX_INT}, got {value}"),
                ));
            }
        }
        Ok(())
    }
}

/// Parameters of a RAM-backed bdev (`type = "malloc"`, RPC `bdev_malloc_create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocBdevParams {
    /// Unique bdev name.
    pub name: String,
    /// Optional fixed UUID (8-4-4-4-12 hex digits); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Capacity in blocks.
    pub num_blocks: u64,
    /// Block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Fixed latency added to every I/O, in microseconds (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_us: u64,
    /// IOPS capacity (0 = unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_iops: u64,
    /// Bandwidth capacity in MiB/s (0 = unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_bw_mbps: u64,
}

impl MallocBdevParams {
    /// The simulation knobs.
    pub fn sim(&self) -> SimParams {
        SimParams {
            latency_us: self.latency_us,
            max_iops: self.max_iops,
            max_bw_mbps: self.max_bw_mbps,
        }
    }

    /// Capacity in bytes (`num_blocks * block_size`, saturating).
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(u64::from(self.block_size))
    }

    /// Checks every field; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ParamError> {
        validate_name(&self.name)?;
        validate_uuid(self.uuid.as_deref())?;
        validate_block_size(self.block_size)?;
        validate_num_blocks(self.num_blocks, self.block_size)?;
        if usize::try_from(self.size_bytes()).is_err() {
            return Err(ParamError::new(
                "num_blocks",
                "capacity does not fit in this machine's address space",
            ));
        }
        self.sim().validate()
    }
}

/// Parameters of a null bdev (`type = "null"`, RPC `bdev_null_create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullBdevParams {
    /// Unique bdev name.
    pub name: String,
    /// Optional fixed UUID (8-4-4-4-12 hex digits); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Capacity in blocks.
    pub num_blocks: u64,
    /// Block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Fixed latency added to every I/O, in microseconds (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_us: u64,
    /// IOPS capacity (0 = unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_iops: u64,
    /// Bandwidth capacity in MiB/s (0 = unlimited).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_bw_mbps: u64,
}

impl NullBdevParams {
    /// The simulation knobs.
    pub fn sim(&self) -> SimParams {
        SimParams {
            latency_us: self.latency_us,
            max_iops: self.max_iops,
            max_bw_mbps: self.max_bw_mbps,
        }
    }

    /// Capacity in bytes (`num_blocks * block_size`, saturating).
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks.saturating_mul(u64::from(self.block_size))
    }

    /// Checks every field; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ParamError> {
        validate_name(&self.name)?;
        validate_uuid(self.uuid.as_deref())?;
        validate_block_size(self.block_size)?;
        validate_num_blocks(self.num_blocks, self.block_size)?;
        self.sim().validate()
    }
}

/// Parameters of an io_uring bdev on a file or block device (`type = "uring"`, RPC
/// `bdev_uring_create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringBdevParams {
    /// Unique bdev name.
    pub name: String,
    /// Path of the backing file or block device.
    pub filename: String,
    /// Block size in bytes (512 or 4096); absent = the device's logical block size, or
    /// 512 for a regular file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Optional fixed UUID (8-4-4-4-12 hex digits); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Open with `O_DIRECT` (bypass the page cache); falls back to buffered I/O when the
    /// file system refuses it. Default true.
    #[serde(default = "default_true")]
    pub direct: bool,
}

impl UringBdevParams {
    /// Checks every field; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ParamError> {
        validate_name(&self.name)?;
        if self.filename.is_empty() {
            return Err(ParamError::new("filename", "must not be empty"));
        }
        if self.filename.contains('\0') {
            return Err(ParamError::new("filename", "must not contain a NUL byte"));
        }
        if let Some(block_size) = self.block_size {
            validate_block_size(block_size)?;
        }
        validate_uuid(self.uuid.as_deref())
    }
}

/// One block device of the config: a `[[bdev]]` table, tagged by its `type`.
///
/// In JSON this is an object with a `"type"` member and the params of that type, e.g.
/// `{"type": "null", "name": "Null0", "num_blocks": 1024, "block_size": 512}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BdevConfig {
    /// A null bdev.
    Null(NullBdevParams),
    /// A malloc (RAM) bdev.
    Malloc(MallocBdevParams),
    /// An io_uring bdev.
    Uring(UringBdevParams),
}

impl BdevConfig {
    /// The bdev's name.
    pub fn name(&self) -> &str {
        match self {
            BdevConfig::Null(p) => &p.name,
            BdevConfig::Malloc(p) => &p.name,
            BdevConfig::Uring(p) => &p.name,
        }
    }

    /// The bdev's kind.
    pub fn kind(&self) -> BdevKind {
        match self {
            BdevConfig::Null(_) => BdevKind::Null,
            BdevConfig::Malloc(_) => BdevKind::Malloc,
            BdevConfig::Uring(_) => BdevKind::Uring,
        }
    }

    /// Checks the params of this bdev.
    pub fn validate(&self) -> Result<(), ParamError> {
        match self {
            BdevConfig::Null(p) => p.validate(),
            BdevConfig::Malloc(p) => p.validate(),
            BdevConfig::Uring(p) => p.validate(),
        }
    }
}

impl From<NullBdevParams> for BdevConfig {
    fn from(p: NullBdevParams) -> Self {
        BdevConfig::Null(p)
    }
}

impl From<MallocBdevParams> for BdevConfig {
    fn from(p: MallocBdevParams) -> Self {
        BdevConfig::Malloc(p)
    }
}

impl From<UringBdevParams> for BdevConfig {
    fn from(p: UringBdevParams) -> Self {
        BdevConfig::Uring(p)
    }
}

/// Checks a bdev name: 1 to [`MAX_NAME_LEN`] bytes, no whitespace or control characters.
pub fn validate_name(name: &str) -> Result<(), ParamError> {
    if name.is_empty() {
        return Err(ParamError::new("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ParamError::new(
            "name",
            format!("must be at most {MAX_NAME_LEN} bytes, got {}", name.len()),
        ));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ParamError::new(
            "name",
            format!("must not contain whitespace or control characters, got {name:?}"),
        ));
    }
    Ok(())
}

/// Checks a block size: 512 or 4096.
pub fn validate_block_size(block_size: u32) -> Result<(), ParamError> {
    if BLOCK_SIZES.contains(&block_size) {
        Ok(())
    } else {
        Err(ParamError::new(
            "block_size",
            format!("must be 512 or 4096, got {block_size}"),
        ))
    }
}

fn validate_num_blocks(num_blocks: u64, block_size: u32) -> Result<(), ParamError> {
    if num_blocks == 0 {
        return Err(ParamError::new("num_blocks", "must be at least 1"));
    }
    match num_blocks.checked_mul(u64::from(block_size)) {
        Some(bytes) if bytes <= MAX_INT => Ok(()),
        _ => Err(ParamError::new(
            "num_blocks",
            format!("{num_blocks} blocks of {block_size} bytes is too large (max {MAX_INT} bytes)"),
        )),
    }
}

/// Checks an optional UUID: 8-4-4-4-12 hex digits.
pub fn validate_uuid(uuid: Option<&str>) -> Result<(), ParamError> {
    let Some(uuid) = uuid else { return Ok(()) };
    let groups: Vec<&str> = uuid.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == lens.len()
        && groups
            .iter()
            .zip(lens)
            .all(|(g, len)| g.len() == len && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ParamError::new(
            "uuid",
            format!("expected 8-4-4-4-12 hex digits, got {uuid:?}"),
        ))
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malloc() -> MallocBdevParams {
        MallocBdevParams {
            name: "Malloc0".into(),
            uuid: None,
            num_blocks: 16,
            block_size: 4096,
            latency_us: 0,
            max_iops: 0,
            max_bw_mbps: 0,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = malloc();
        assert_eq!(p.validate(), Ok(()));
        p.block_size = 1000;
        let e = p.validate().unwrap_err();
        assert_eq!(e.to_string(), "block_size: must be 512 or 4096, got 1000");
        p.block_size = 512;
        p.num_blocks = 0;
        assert_eq!(p.validate().unwrap_err().field, "num_blocks");
        p.num_blocks = u64::MAX / 2;
        assert_eq!(p.validate().unwrap_err().field, "num_blocks");
        p.num_blocks = 1;
        p.name = "bad name".into();
        assert_eq!(p.validate().unwrap_err().field, "name");
        p.name = String::new();
        assert_eq!(p.validate().unwrap_err().field, "name");
        p.name = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(p.validate().unwrap_err().field, "name");
        p.name = "ok".into();
        p.uuid = Some("not-a-uuid".into());
        assert_eq!(p.validate().unwrap_err().field, "uuid");
        p.uuid = Some("0b8e5a3c-1f2d-4c5e-9a7b-1234567890ab".into());
        assert_eq!(p.validate(), Ok(()));
        p.latency_us = MAX_LATENCY_US + 1;
        assert_eq!(p.validate().unwrap_err().field, "latency_us");
        p.latency_us = 0;
        p.max_iops = u64::MAX;
        assert_eq!(p.validate().unwrap_err().field, "max_iops");
    }

    #[test]
    fn uring_validation() {
        let mut p = UringBdevParams {
            name: "U".into(),
            filename: "/tmp/x".into(),
            block_size: None,
            uuid: None,
            direct: true,
        };
        assert_eq!(p.validate(), Ok(()));
        p.block_size = Some(1024);
        assert_eq!(p.validate().unwrap_err().field, "block_size");
        p.block_size = Some(512);
        p.filename = String::new();
        assert_eq!(p.validate().unwrap_err().field, "filename");
    }

    #[test]
    fn rpc_json_uses_spdk_field_names() {
        // What SPDK's rpc.py sends for `bdev_malloc_create -b Malloc1 64 4096`.
        let json = r#"{"name": "Malloc1", "num_blocks": 16384, "block_size": 4096}"#;
        let p: MallocBdevParams = serde_json::from_str(json).unwrap();
        assert_eq!(p.num_blocks, 16384);
        assert_eq!(p.sim(), SimParams::default());
        let json = r#"{"name": "U", "filename": "/dev/nvme0n1"}"#;
        let u: UringBdevParams = serde_json::from_str(json).unwrap();
        assert!(u.direct);
        assert_eq!(u.block_size, None);
        let bad = r#"{"name": "N", "num_blocks": 1, "block_size": 512, "filename": "x"}"#;
        let e = serde_json::from_str::<NullBdevParams>(bad).unwrap_err();
        assert!(e.to_string().contains("unknown field `filename`"), "{e}");
    }

    #[test]
    fn tagged_enum_in_json() {
        let json = r#"{"type": "null", "name": "Null0", "num_blocks": 8, "block_size": 512}"#;
        let b: BdevConfig = serde_json::from_str(json).unwrap();
        assert_eq!(b.kind(), BdevKind::Null);
        assert_eq!(b.name(), "Null0");
        let back = serde_json::to_value(&b).unwrap();
        assert_eq!(back["type"], "null");
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
        let bad = r#"{"type": "malloc", "name": "M", "num_blocks": 8, "block_size": 512, "x": 1}"#;
        assert!(serde_json::from_str::<BdevConfig>(bad).is_err());
    }
}
