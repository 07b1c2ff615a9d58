//! Loading a config from TOML text with precise errors.
//!
//! Two steps: the text is deserialized into a raw mirror of [`Config`] (every `[[bdev]]`
//! table is one flat struct, so serde and the TOML deserializer report the key path and
//! position of a wrong type or an unknown key), then the raw form is converted and checked.
//! Errors from the second step are located in the text by walking the TOML document along
//! their key path.

use std::ops::Range;

use serde::Deserialize;

use crate::bdev::{BdevConfig, BdevKind, MallocBdevParams, NullBdevParams, UringBdevParams};
use crate::config::{Config, ReactorsConfig, RpcConfig};
use crate::error::{ConfigError, KeyPath, Location, ParamError, Segment};

/// The config as written in TOML, before conversion and checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    reactors: ReactorsConfig,
    #[serde(default)]
    rpc: RpcConfig,
    #[serde(default)]
    bdev: Vec<RawBdev>,
    #[serde(default)]
    scheduler: Option<crate::vm::SchedulerConfig>,
    #[serde(default)]
    path: Vec<crate::vm::PathConfig>,
    #[serde(default)]
    vm: Vec<crate::vm::VmSpec>,
    #[serde(default)]
    volume: Vec<crate::vm::VolumeConfig>,
    #[serde(default)]
    host: Vec<crate::vm::HostBinding>,
    #[serde(default)]
    vhost: crate::vhost::VhostConfig,
    #[serde(default)]
    vhost_blk: Vec<crate::vhost::VhostBlkConfig>,
    #[serde(default)]
    hooks: crate::vm::HooksConfig,
    #[serde(default)]
    nvme_controller: Vec<crate::nvme::NvmeControllerConfig>,
    #[serde(default)]
    nvmf_subsystem: Vec<crate::nvmf::NvmfSubsystemConfig>,
}

/// A `[[bdev]]` table with the fields of every bdev type; which ones are allowed and
/// required depends on `type` and is checked by [`RawBdev::into_config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBdev {
    #[serde(rename = "type")]
    kind: BdevKind,
    name: String,
    uuid: Option<String>,
    num_blocks: Option<u64>,
    block_size: Option<u32>,
    latency_us: Option<u64>,
    max_iops: Option<u64>,
    max_bw_mbps: Option<u64>,
    filename: Option<String>,
    direct: Option<bool>,
}

const MALLOC_FIELDS: &[&str] = &[
    "name",
    "uuid",
    "num_blocks",
    "block_size",
    "latency_us",
    "max_iops",
    "max_bw_mbps",
];
const URING_FIELDS: &[&str] = &["name", "filename", "block_size", "uuid", "direct"];

impl RawBdev {
    fn into_config(self) -> Result<BdevConfig, ParamError> {
        let allowed = match self.kind {
            BdevKind::Null | BdevKind::Malloc => MALLOC_FIELDS,
            BdevKind::Uring => URING_FIELDS,
        };
        let present = [
            ("num_blocks", self.num_blocks.is_some()),
            ("block_size", self.block_size.is_some()),
            ("latency_us", self.latency_us.is_some()),
            ("max_iops", self.max_iops.is_some()),
            ("max_bw_mbps", self.max_bw_mbps.is_some()),
            ("filename", self.filename.is_some()),
            ("direct", self.direct.is_some()),
        ];
        if let Some((field, _)) = present
            .iter()
            .find(|(field, set)| *set && !allowed.contains(field))
        {
            return Err(ParamError::new(
                *field,
                format!(
                    "not a parameter of {} bdevs (they take: {})",
                    self.kind,
                    allowed.join(", ")
                ),
            ));
        }
        let kind = self.kind;
        Ok(match self.kind {
            BdevKind::Null => BdevConfig::Null(NullBdevParams {
                num_blocks: required(kind, "num_blocks", self.num_blocks)?,
                block_size: required(kind, "block_size", self.block_size)?,
                name: self.name,
                uuid: self.uuid,
                latency_us: self.latency_us.unwrap_or(0),
                max_iops: self.max_iops.unwrap_or(0),
                max_bw_mbps: self.max_bw_mbps.unwrap_or(0),
            }),
            BdevKind::Malloc => BdevConfig::Malloc(MallocBdevParams {
                num_blocks: required(kind, "num_blocks", self.num_blocks)?,
                block_size: required(kind, "block_size", self.block_size)?,
                name: self.name,
                uuid: self.uuid,
                latency_us: self.latency_us.unwrap_or(0),
                max_iops: self.max_iops.unwrap_or(0),
                max_bw_mbps: self.max_bw_mbps.unwrap_or(0),
            }),
            BdevKind::Uring => BdevConfig::Uring(UringBdevParams {
                filename: self
                    .filename
                    .ok_or_else(|| ParamError::new("filename", "required for uring bdevs"))?,
                name: self.name,
                block_size: self.block_size,
                uuid: self.uuid,
                direct: self.direct.unwrap_or(true),
            }),
        })
    }
}

fn required<T>(kind: BdevKind, field: &str, value: Option<T>) -> Result<T, ParamError> {
    value.ok_or_else(|| ParamError::new(field, format!("required for {kind} bdevs")))
}

/// A conversion error: key path and message.
#[derive(Debug)]
pub(crate) struct ConvertError(KeyPath, String);

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConvertError;

    fn try_from(raw: RawConfig) -> Result<Config, ConvertError> {
        let mut bdevs = Vec::with_capacity(raw.bdev.len());
        for (i, bdev) in raw.bdev.into_iter().enumerate() {
            let at = KeyPath::root().key("bdev").index(i);
            bdevs.push(
                bdev.into_config()
                    .map_err(|e| ConvertError(at.key(e.field), e.message))?,
            );
        }
        let config = Config {
            reactors: raw.reactors,
            rpc: raw.rpc,
            bdevs,
            scheduler: raw.scheduler,
            paths: raw.path,
            vms: raw.vm,
            volumes: raw.volume,
            hosts: raw.host,
            vhost: raw.vhost,
            vhost_blks: raw.vhost_blk,
            hooks: raw.hooks,
            nvme_controllers: raw.nvme_controller,
            nvmf_subsystems: raw.nvmf_subsystem,
        };
        config
            .check()
            .map_err(|(key, msg)| ConvertError(key, msg))?;
        Ok(config)
    }
}

/// Parses and checks `text`; `origin` names it in errors.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let deserializer = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = serde_key_path(e.path());
        let inner = e.into_inner();
        let location = inner.span().map(|s| Location::of_offset(text, s.start));
        ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_string(),
            location,
            message: one_line(inner.message()),
        }
    })?;
    Config::try_from(raw).map_err(|ConvertError(key, message)| ConfigError::Invalid {
        origin: origin.to_owned(),
        location: locate(text, &key).map(|s| Location::of_offset(text, s.start)),
        key: key.to_string(),
        message,
    })
}

fn serde_key_path(path: &serde_path_to_error::Path) -> KeyPath {
    let mut key = KeyPath::root();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => key.push(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key: k } => key.push(Segment::Key(k.clone())),
            serde_path_to_error::Segment::Enum { variant } => {
                key.push(Segment::Key(variant.clone()))
            }
            serde_path_to_error::Segment::Unknown => key.push(Segment::Key("?".into())),
        }
    }
    key
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

/// The span of the deepest item of `text` along `path` (the value when the last key is
/// present, else the closest enclosing table).
fn locate(text: &str, path: &KeyPath) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for segment in path.segments() {
        let next = match segment {
            Segment::Key(key) => item.get(key.as_str()),
            Segment::Index(index) => item.get(*index),
        };
        match next {
            Some(next) => {
                item = next;
                best = item_span(item).or(best);
            }
            None => break,
        }
    }
    best
}

fn item_span(item: &toml_edit::Item) -> Option<Range<usize>> {
    match item {
        toml_edit::Item::None => None,
        toml_edit::Item::Value(v) => v.span(),
        toml_edit::Item::Table(t) => t.span(),
        toml_edit::Item::ArrayOfTables(a) => a.span(),
    }
}
