//! vhost-user-blk virtual disks: the `[vhost]` and `[[vhost_blk]]` sections, shared with the
//! `vhost_create_blk_controller` JSON-RPC method.
//!
//! ```toml
//! [vhost]
//! socket_dir = "/var/tmp"          # where controller sockets go (vmpathd -S DIR overrides)
//!
//! [[vhost_blk]]
//! name = "vm1-disk0"               # controller name; the socket is socket_dir/name by default
//! bdev = "vm1-disk"                # any bdev; a VM volume is scheduled per request as its VM
//! num_queues = 2                   # virtqueues, spread over the reactors
//! # socket = "/run/vm1.sock"       # explicit socket path (relative = under socket_dir)
//! # vm = "vm1"                     # VM tag for a plain bdev (a volume knows its VM)
//! # readonly = false
//! ```
//!
//! QEMU attaches with `-chardev socket,id=c0,path=SOCKET,reconnect=1 -device
//! vhost-user-blk-pci,chardev=c0,num-queues=2` (guest RAM shared:
//! `-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem`);
//! cloud-hypervisor with `--disk vhost_user=true,socket=SOCKET,num_queues=2`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ParamError;

/// Default directory of vhost-user sockets.
pub const DEFAULT_VHOST_SOCKET_DIR: &str = "/var/tmp";

/// `[vhost]`: settings shared by all vhost-user-blk controllers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostConfig {
    /// Directory for controller sockets given without an absolute path.
    #[serde(default = "default_dir")]
    pub socket_dir: PathBuf,
}

impl Default for VhostConfig {
    fn default() -> Self {
        VhostConfig {
            socket_dir: default_dir(),
        }
    }
}

impl VhostConfig {
    /// True when every field has its default.
    pub fn is_default(&self) -> bool {
        *self == VhostConfig::default()
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from(DEFAULT_VHOST_SOCKET_DIR)
}

fn default_queues() -> u16 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A `[[vhost_blk]]` table / the params of `vhost_create_blk_controller` (SPDK names `ctrlr`
/// and `dev_name` are accepted as aliases of `name` and `bdev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostBlkConfig {
    /// Controller name (unique).
    #[serde(alias = "ctrlr")]
    pub name: String,
    /// Backing bdev (a VM volume, or any other bdev).
    #[serde(alias = "dev_name")]
    pub bdev: String,
    /// Socket path; relative or absent = under `[vhost] socket_dir` (absent: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// VM the disk belongs to (needed only for a bdev that is not a volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Number of virtqueues (1..=64).
    #[serde(default = "default_queues")]
    pub num_queues: u16,
    /// Present the disk read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
}

impl VhostBlkConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ParamError> {
        crate::bdev::validate_name(&self.name)?;
        crate::bdev::validate_name(&self.bdev).map_err(|e| ParamError::new("bdev", e.message))?;
        if !(1..=64).contains(&self.num_queues) {
            return Err(ParamError::new(
                "num_queues",
                format!("must be 1..=64, got {}", self.num_queues),
            ));
        }
        if let Some(s) = &self.socket {
            if s.as_os_str().is_empty() {
                return Err(ParamError::new("socket", "must not be empty"));
            }
        }
        Ok(())
    }

    /// The socket path, resolved against `dir`.
    pub fn socket_path(&self, dir: &Path) -> PathBuf {
        match &self.socket {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => dir.join(p),
            None => dir.join(&self.name),
        }
    }
}
