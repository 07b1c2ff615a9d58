//! VMs, scheduler paths and volumes: the `[scheduler]`, `[[path]]`, `[[vm]]` and `[[volume]]`
//! sections, shared with the `vm_*`, `sched_path_*` and `volume_*` JSON-RPC methods.
//!
//! ```toml
//! [[path]]                      # a block device the scheduler may route a VM's I/O to
//! name = "local0"
//! bdev = "Malloc0"
//! capacity_iops = 200000        # estimate, for admission control and load balancing
//! capacity_mbps = 2000
//!
//! [[vm]]
//! name = "vm-a"
//! shares = 2000
//! reservation = { iops = 5000 }
//! limit = { iops = 50000, mbps = 400 }
//! priority = "high"
//! path_policy = { selector = "least-queue-depth", affinity = ["local0"] }
//! failover = "suspend"
//!
//! [[volume]]                    # the VM's virtual disk: a slice of the paths' storage
//! name = "vm-a-disk0"
//! vm = "vm-a"
//! paths = ["local0"]
//! offset_blocks = 0
//! num_blocks = 8192
//! ```
//!
//! VM specs are the scheduler's own [`scheduler::VmSpec`] (shares 1-10000, reservation and
//! limit in IOPS and MB/s, priority class, path policy, failover policy).

use serde::{Deserialize, Serialize};

pub use scheduler::{
    FailoverPolicy, PathPolicySpec, PathState, PriorityClass, RateSpec, SchedulerConfig,
    SelectorSpec, VmSpec,
};

use crate::error::ParamError;

/// Turns a scheduler spec error (`"field: message"`) into a [`ParamError`].
pub fn param_error(e: scheduler::SpecError) -> ParamError {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((field, msg)) if !field.contains(' ') => ParamError::new(field, msg),
        _ => ParamError::new("", text),
    }
}

/// A `[[path]]` table: a block device registered as a scheduler path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    /// Unique path name (VM affinity lists refer to it).
    pub name: String,
    /// The block device behind the path.
    pub bdev: String,
    /// Estimated capacity in IOPS.
    pub capacity_iops: u64,
    /// Estimated capacity in MB/s.
    pub capacity_mbps: u64,
    /// Relative throughput weight 1..=100 (service-time selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Queue depth the scheduler keeps on the path (beyond it, requests wait in QoS order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_outstanding: Option<u32>,
    /// For a multipath NVMe namespace bdev: which of its fabric paths (the path id shown by
    /// `bdev_nvme_get_io_paths`) this scheduler path is. Its state then follows that path's
    /// (up/down, ANA, failover) automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_path: Option<u16>,
}

impl PathConfig {
    /// The scheduler's view of this path.
    pub fn spec(&self) -> scheduler::PathSpec {
        let mut s = scheduler::PathSpec::new(&self.name, self.capacity_iops, self.capacity_mbps);
        if let Some(w) = self.weight {
            s.weight = w;
        }
        if let Some(q) = self.max_outstanding {
            s.max_outstanding = q;
        }
        s
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ParamError> {
        crate::bdev::validate_name(&self.bdev).map_err(|e| ParamError::new("bdev", e.message))?;
        self.spec().validate().map_err(param_error)
    }
}

/// A `[[host]]` table: a remote host (by host NQN) whose NVMe/TCP I/O is scheduled as a
/// VM's. Through any exported VM volume, the host's commands go through that VM's queue,
/// shares, reservation, limit and path policy, whichever VM the volume belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBinding {
    /// The host's NQN (as it sends it in Connect).
    pub nqn: String,
    /// The VM its I/O is scheduled as.
    pub vm: String,
}

impl HostBinding {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ParamError> {
        crate::nvmf::validate_nqn("nqn", &self.nqn)?;
        if self.vm.is_empty() {
            return Err(ParamError::new("vm", "must name a VM"));
        }
        Ok(())
    }
}

/// A `[[volume]]` table: a VM's virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Unique name; the volume is also a bdev of this name (exportable by the frontends).
    pub name: String,
    /// The VM it belongs to.
    pub vm: String,
    /// Paths reaching its storage (scheduler path names).
    pub paths: Vec<String>,
    /// First block of the slice on the storage.
    #[serde(default)]
    pub offset_blocks: u64,
    /// Size of the slice in blocks (absent: to the end of the storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_blocks: Option<u64>,
}

impl VolumeConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ParamError> {
        crate::bdev::validate_name(&self.name)?;
        if self.paths.is_empty() {
            return Err(ParamError::new("paths", "must name at least one path"));
        }
        if self.num_blocks == Some(0) {
            return Err(ParamError::new("num_blocks", "must be at least 1"));
        }
        Ok(())
    }
}

/// `[hooks]`: commands run on management events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Run (through `/bin/sh -c`) when the scheduler recommends migrating a VM, with the
    /// event in the environment: `VMPATH_EVENT` (`vm_migrate_recommended` or
    /// `vm_migrate_cleared`), `VMPATH_VM`, `VMPATH_REASON`, `VMPATH_MEASURED_IOPS`,
    /// `VMPATH_RESERVED_IOPS`, and the whole event as JSON in `VMPATH_EVENT_JSON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_migrate: Option<String>,
}

impl HooksConfig {
    /// True when no hook is set.
    pub fn is_empty(&self) -> bool {
        self.vm_migrate.is_none()
    }
}
